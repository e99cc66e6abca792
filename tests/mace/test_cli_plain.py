"""With the package installed, plain MACE runs (no ``--head`` / ``--head=none``) are unchanged.

Three runs with the same seed: hook disabled (``EIP_PLUGINS_DISABLE=1``, the reference), no
``--head`` and ``--head=none`` with the hook active. Trained weights and ``mace_eval_configs``
outputs must be identical bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

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
