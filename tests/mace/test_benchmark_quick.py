"""The benchmark's MACE part (issue 6) end to end in ``--quick`` mode on tiny data.

Real ``mace_run_train`` runs (plain x2 for a 2-member ensemble, --head=e2ip/eip/mve, 2
epochs, 8+8 channels), then every SPEC §3 metric per method and split, and the cost ratios
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
FRAMEWORK = "mace"
# MACE models are evaluated in float64.
ROTATION_TOLERANCE = 1e-6


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


def test_scalar_backbone_variant_and_head_subset(tmp_path):
    """--backbone mace_scalar trains '8x0e' (quick) models; --heads restricts the heads and the
    objective variants that go with them."""
    from dataclasses import replace

    from examples.benchmark import mace_part

    scalar = replace(mace_part.QUICK, backbone="mace_scalar", heads=("e2ip",))
    cmd = mace_part.train_command("plain_0", "none", 1, tmp_path, tmp_path / "p", scalar)
    assert "--hidden_irreps=8x0e" in cmd
    assert set(mace_part.training_jobs(scalar)) == {"plain_0", "plain_1", "plain_2", "plain_3"} | {
        "e2ip",
        "e2ip_nll",
    }
    only_mve = replace(mace_part.QUICK, heads=("mve",))
    assert "e2ip_nll" not in mace_part.training_jobs(only_mve)
