"""The benchmark's convergence study (issue 12): budgets, runs, scoring and the report, with a
stand-in framework part (no training: the real parts' ``train_all`` is what the benchmark's
quick tests run) whose models predict the reference forces plus a known offset."""

from __future__ import annotations

import dataclasses
import json
import sys
import types
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase.calculators.calculator import Calculator, all_changes

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # `examples` is imported from the repository root
    sys.path.insert(0, str(REPO))

from examples.benchmark import convergence  # noqa: E402
from examples.benchmark import data as bdata  # noqa: E402

# per method: force offset (eV/A) of its model after E epochs = OFFSET[method] / E
OFFSET = {"plain": 1.0, "e2ip": 1.2, "eip": 0.9, "mve": 1.0, "e2ip_nll": 2.0}


class ShiftedReference(Calculator):
    """Forces = the frame's REF_forces + ``offset`` on every component."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, offset: float):
        super().__init__()
        self.offset = offset

    def calculate(self, atoms=None, properties=("forces",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.results = {"energy": 0.0, "forces": atoms.arrays["REF_forces"] + self.offset}


def fake_part(calls: list) -> types.SimpleNamespace:
    """A framework part with the interface convergence.py uses."""

    def train_all(data, work, s, jobs, reuse):
        calls.append((s.epochs, s.seed, s.members))
        names = {"plain_0": "plain", **{h: h for h in s.heads}, "e2ip_nll": "e2ip_nll"}
        return {
            job: {"model": f"{method}@{s.epochs}", "epoch_s": 1.0 if method == "plain" else 1.1}
            for job, method in names.items()
        }

    def force_calculator(path, plain):
        method, epochs = path.split("@")
        assert plain == (method == "plain")
        return ShiftedReference(OFFSET[method] / int(epochs))

    settings = FakeSettings()
    return types.SimpleNamespace(
        train_all=train_all, force_calculator=force_calculator, QUICK=settings, DEFAULT=settings
    )


@dataclasses.dataclass(frozen=True)
class FakeSettings:
    heads: tuple = ("e2ip", "eip", "mve")
    epochs: int = 20
    seed: int = 1
    members: int = 4


@pytest.fixture
def study(tmp_path, monkeypatch):
    frames = ase.io.read(REPO / "examples" / "data" / "ethanol_test_300K.xyz", ":3")
    data = tmp_path / "data"
    data.mkdir()
    for split in ("test_300K", "test_hot"):
        ase.io.write(data / f"{split}.xyz", frames, format="extxyz")
    calls: list = []
    part = fake_part(calls)
    monkeypatch.setattr(convergence, "framework_part", lambda framework: part)
    monkeypatch.setattr(bdata, "ensure_data", lambda settings: data)
    argv = ["--framework", "nequip", "--quick", "--epochs", "20,10", "--seeds", "2"]
    argv += ["--out", str(tmp_path / "out")]
    convergence.main(argv)
    return {"out": tmp_path / "out" / "nequip", "calls": calls}


def test_every_budget_and_run_is_trained_once_with_disjoint_seeds(study):
    assert study["calls"] == [(10, 1, 1), (10, 5, 1), (20, 1, 1), (20, 5, 1)]


def test_scores_are_the_force_mae_of_each_model(study):
    summary = json.loads((study["out"] / "convergence.json").read_text())
    assert summary["epochs"] == [10, 20] and len(summary["runs"]) == 4
    for run in summary["runs"]:
        for method, offset in OFFSET.items():
            for split in ("test_300K", "test_hot"):
                row = run["metrics"][method][split]
                np.testing.assert_allclose(row["force_mae"], offset / run["epochs"], rtol=1e-12)
                np.testing.assert_allclose(row["force_rmse"], offset / run["epochs"], rtol=1e-12)
    ratio = convergence.values(summary, 10, "e2ip_nll", "test_hot", ratio=True)
    np.testing.assert_allclose(ratio, [2.0, 2.0])


def test_report_tables_and_plot(study):
    text = (study["out"] / "convergence.md").read_text()
    assert "| 300 K (in distr.) | plain | 0.100 ± 0.000 | 0.050 ± 0.000 |" in text
    assert "| 1200 K (hot) | e2ip | 1.20 ± 0.00 | 1.20 ± 0.00 |" in text
    assert "| e2ip | 1.10 | 1.10 |" in text  # training CPU per epoch / plain
    assert "unseen" not in text  # splits without data are left out
    assert (study["out"] / "convergence.png").stat().st_size > 10_000


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--epochs", "10,x"], "not a comma-separated list"),
        (["--epochs", "0,10"], "must be >= 1 epoch"),
        (["--seeds", "0"], "--seeds: invalid value 0"),
    ],
)
def test_bad_arguments_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit):
        convergence.parse_args(["--framework", "mace", *argv])
    assert message in capsys.readouterr().err
