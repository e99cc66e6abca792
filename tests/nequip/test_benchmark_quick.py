"""The benchmark's NequIP part (issue 6) end to end in ``--quick`` mode on tiny data.

Real ``nequip-train`` runs (plain x2 for a 2-member ensemble, ++head=e2ip/eip/mve, 2
epochs, 2 layers of 8 features), then every SPEC §3 metric per method and split, and the cost ratios
(checks shared with the other framework: ``examples/benchmark/quick_checks.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # `examples` is imported from the repository root
    sys.path.insert(0, str(REPO))

from examples.benchmark import quick_checks  # noqa: E402

pytestmark = pytest.mark.slow
FRAMEWORK = "nequip"
# NequIP models are evaluated in their training dtype (float32).
ROTATION_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    return {"out": out, "results": quick_checks.run_quick_part(FRAMEWORK, out)}


def test_every_method_and_metric_is_finite(bench):
    quick_checks.check_every_method_and_metric_is_finite(bench["results"])


def test_covariances_rotate_except_eip(bench):
    quick_checks.check_covariances_rotate_except_eip(bench["results"], ROTATION_TOLERANCE)


def test_cost_ratios(bench):
    quick_checks.check_cost_ratios(bench["results"])


def test_attached_head_keeps_the_backbone(bench):
    quick_checks.check_attached_head_keeps_the_backbone(bench["results"])


def test_calibration_variants(bench):
    quick_checks.check_calibration_variants(bench["results"])


def test_report_tables_and_plots(bench):
    quick_checks.check_report_tables_and_plots(bench["results"], FRAMEWORK, bench["out"])


def test_backbone_variants_train_the_same_size_of_model(tmp_path):
    """--backbone: l_max 0 overrides l_max; Allegro's plain models use plain_allegro.yaml and its
    heads config_with_eip backbone=allegro, with Allegro's width key (measured in the README)."""
    from dataclasses import replace

    from examples.benchmark import nequip_part

    e0s = {"C": -1.0, "H": -0.5, "O": -2.0}
    lmax0 = replace(nequip_part.QUICK, backbone="nequip_lmax0")
    for head in ("none", "e2ip"):
        cmd = nequip_part.train_command(head, 1, tmp_path, tmp_path / head, lmax0, e0s)
        assert "++training_module.model.l_max=0" in cmd
    allegro = replace(nequip_part.QUICK, backbone="allegro")
    plain = nequip_part.train_command("none", 1, tmp_path, tmp_path / "p", allegro, e0s)
    head = nequip_part.train_command("e2ip", 1, tmp_path, tmp_path / "h", allegro, e0s)
    assert plain[plain.index("-cn") + 1] == "plain_allegro" and "backbone=allegro" in head
    for cmd in (plain, head):
        assert "++training_module.model.num_scalar_features=16" in cmd
        assert not any("model.num_features" in str(a) for a in cmd)
    with pytest.raises(SystemExit):
        nequip_part.main(["--data", str(tmp_path), "--backbone", "schnet", "--quick"])


def test_neighbours_refits_every_runs_e2ip_and_evaluates_both(bench):
    """``python -m examples.benchmark.neighbours``: eip-calibrate --density_neighbours of the
    run's e2ip model, evaluated beside its default refit with the benchmark's metrics."""
    import json

    import numpy as np

    from eip_plugins.nequip.attach import load_original
    from eip_plugins.nequip.calibration import head_of
    from examples.benchmark import neighbours

    assert (
        neighbours.main(["--framework", FRAMEWORK, "--out", str(bench["out"]), "--neighbours", "8"])
        == 0
    )
    written = json.loads((bench["out"] / FRAMEWORK / "neighbours.json").read_text())
    assert written["neighbours"] == 8 and len(written["runs"]) == len(written["metrics"]) >= 1
    for run in written["metrics"]:
        assert set(run) == {neighbours.DEFAULT, neighbours.NEIGHBOURS}
        for method in run.values():
            for key in neighbours.METRICS:
                assert np.isfinite([method[s][key] for s in method]).all()
    e2ip = Path(written["runs"][0])
    banked = head_of(load_original(e2ip / "best_neighbours.ckpt")).density
    default = head_of(load_original(e2ip / "best_recalibrated.ckpt")).density
    assert banked.bank.shape[0] > 0 and default.bank.shape[0] == 0
    assert "e2ip + neighbours" in (bench["out"] / FRAMEWORK / "neighbours.md").read_text()
