"""Bad input stops ``mace_run_train --head=...`` before training, with one line naming the cause."""

from __future__ import annotations

import ase.io
import pytest
from mace_helpers import BIN, train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def no_forces_file(tmp_path_factory, data):
    frames = ase.io.read(data["tiny_train"], index=":")
    for atoms in frames:
        del atoms.arrays["REF_forces"]
    path = tmp_path_factory.mktemp("bad") / "no_forces.xyz"
    ase.io.write(path, frames, format="extxyz")
    return path


def _fails(tmp_path, data, extra, expected: str):
    proc = train(tmp_path, data, "bad", ["--max_num_epochs=1", *extra], check=False)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert expected in last, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    log = tmp_path / "logs" / "bad_run-3.log"
    assert not log.exists() or "===========TRAINING===========" not in log.read_text()
    return last


def test_dataset_without_forces(tmp_path, data, no_forces_file):
    bad = {"train": no_forces_file, "valid": data["tiny_valid"]}
    last = _fails(tmp_path, bad, ["--head=e2ip"], "--train_file")
    assert str(no_forces_file) in last and "REF_forces" in last


@pytest.mark.parametrize("quantile", ["1.5", "0", "nan"])
def test_quantile_outside_unit_interval(tmp_path, data, quantile):
    _fails(tmp_path, data, ["--head=eip", f"--eip_quantile={quantile}"], "--eip_quantile")


def test_scalar_only_hidden_irreps_with_geometric_features_never(tmp_path, data):
    """Scalar-only models train with the geometric front end (test_scalar_backbones); without
    it they are refused with one line."""
    extra = ["--head=e2ip", "--hidden_irreps=16x0e", "--eip_geometric_features=never"]
    last = _fails(tmp_path, data, extra, "--hidden_irreps")
    assert "1o" in last and "--eip_geometric_features=auto" in last


def test_unknown_head_name(tmp_path, data):
    last = _fails(tmp_path, data, ["--head=gaussian"], "--head")
    assert "invalid choice" in last


def test_the_other_adapter_names_its_extra_in_this_environment(tmp_path):
    """NequIP is not installed next to MACE: importing its adapter says what to install, and
    eip-attach nequip stops with one line."""
    import os
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", "from eip_plugins.nequip import NequIPUQCalculator"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: eip_plugins.nequip needs NequIP") and (
        'pip install "eip-plugins[nequip]"' in last
    )
    proc = subprocess.run(
        [str(BIN / "eip-attach"), "nequip", "--model", "m.ckpt", "--train_file", "t.xyz",
         "--output", "o.ckpt"],
        cwd=tmp_path, capture_output=True, text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},  # torch/e3nn warnings are not ours
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"eip-attach: error: {last.removeprefix('ImportError: ')}"
    ]
