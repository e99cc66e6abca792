"""With the package installed, plain MACE runs (no ``--head`` / ``--head=none``) are unchanged.

Three runs with the same seed: hook disabled (``EIP_PLUGINS_DISABLE=1``, the reference), no
``--head`` and ``--head=none`` with the hook active. Trained weights and ``mace_eval_configs``
outputs must be identical bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mace_helpers import cli_env, run_parallel, train_command

pytestmark = pytest.mark.slow


def _state(workdir):
    model = torch.load(workdir / "plain.model", map_location="cpu", weights_only=False)
    return type(model).__name__, model.state_dict()


@pytest.mark.parametrize("variant", ["default", "none"])
def test_plain_training_identical_to_disabled_hook(plain_runs, variant):
    ref_cls, ref = _state(plain_runs["disabled"]["workdir"])
    cls, state = _state(plain_runs[variant]["workdir"])
    assert cls == ref_cls and cls != "EvidentialMACE"
    assert state.keys() == ref.keys()
    for key in ref:
        assert torch.equal(state[key], ref[key]), key


@pytest.mark.parametrize("variant", ["default", "none"])
def test_plain_eval_configs_identical_to_disabled_hook(plain_runs, variant):
    ref = plain_runs["disabled"]["frames"]
    frames = plain_runs[variant]["frames"]
    assert len(frames) == len(ref)
    for a, b in zip(frames, ref, strict=True):
        assert set(a.arrays) == set(b.arrays)
        assert set(a.info) == set(b.info)
        assert not any("uncertainty" in k for k in (*a.arrays, *a.info))
        np.testing.assert_array_equal(a.arrays["MACE_forces"], b.arrays["MACE_forces"])
        assert a.info["MACE_energy"] == b.info["MACE_energy"]


def test_plain_logs_have_no_uncertainty_metrics(plain_runs):
    for run in plain_runs.values():
        log = (run["workdir"] / "logs" / "plain_run-3.log").read_text()
        assert "RMSE_F=" in log
        assert "NLL_F" not in log and "NLL F" not in log


@pytest.fixture(scope="module")
def detached_runs(tmp_path_factory, data) -> dict:
    """Plain MACE and MACE with a detached e2ip / eip head, same seed and settings, clipping at
    every step (``--clip_grad=0.1``), trained concurrently and single-threaded."""
    small = {"train": data["tiny_train"], "valid": data["tiny_valid"]}
    extra = ["--max_num_epochs=2", "--clip_grad=0.1"]
    jobs, dirs = [], {}
    for variant, flags in {"plain": [], "e2ip": ["--head=e2ip"], "eip": ["--head=eip"]}.items():
        dirs[variant] = tmp_path_factory.mktemp(f"detached_{variant}")
        env = cli_env(OMP_NUM_THREADS="1")
        jobs.append((train_command(small, "plain", [*extra, *flags]), dirs[variant], env))
    run_parallel(jobs)
    return dirs


@pytest.mark.parametrize("head", ["e2ip", "eip"])
def test_a_detached_head_leaves_the_model_bit_identical_to_a_plain_run(detached_runs, head):
    """--eip_force_objective=detached (default): the model MACE trains with a head is the one it
    trains without, bit for bit: the head takes no random numbers from the run (initialisation,
    the psi0 pass over the shuffled loader), its gradient is clipped apart from the model's, and
    the validation loss that picks the checkpoint is MACE's own."""
    _, ref = _state(detached_runs["plain"])
    model = torch.load(detached_runs[head] / "plain.model", map_location="cpu", weights_only=False)
    assert type(model).__name__ == "EvidentialMACE" and model.eip_head_kind == head
    state = model.model.state_dict()
    assert state.keys() == ref.keys()
    for key in ref:
        assert torch.equal(state[key], ref[key]), key
