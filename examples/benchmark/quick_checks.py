"""The benchmark's own ``--quick`` self-check, shared by the MACE and NequIP test suites.

Each framework suite runs its part (``mace_part`` / ``nequip_part``) on tiny data in its own
environment with :func:`run_quick_part`, then calls the ``check_*`` functions. Only finiteness and
structure are checked: no absolute times, no accuracy thresholds (2 epochs on ~30 frames).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from .common import ATTACHED, CALIBRATION_VARIANTS, DERIVED, METRICS

REPO = Path(__file__).resolve().parents[2]
VARIANTS = (*CALIBRATION_VARIANTS, *DERIVED)  # e2ip refitted by eip-calibrate; mve x density
# e2ip_nll: e2ip trained with the papers' force objective (OBJECTIVE_VARIANTS of the parts)
UQ_METHODS = ("ensemble", "ensemble_iso", "e2ip", "e2ip_nll", "eip", "mve", ATTACHED, *VARIANTS)
METHODS = ("plain", *UQ_METHODS)
COSTED = ("plain", "ensemble", "e2ip", "eip", "mve")  # ensemble_iso: the ensemble's models
EQUIVARIANT = ("ensemble", "ensemble_iso", "e2ip", "e2ip_nll", "mve", ATTACHED, *VARIANTS)
SPLITS = ("test_300K", "test_hot", "test_unseen")


def _run(args: list[str], timeout: int = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.pop("EIP_PLUGINS_DISABLE", None)
    proc = subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, (
        f"{' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}"
    )
    return proc


def run_quick_part(framework: str, out: Path) -> dict:
    """Generate (or reuse) the tiny data and run ``examples.benchmark.<framework>_part --quick``
    with a 2-member ensemble; returns the part's ``results.json``."""
    data = Path(_run(["-m", "examples.benchmark.data", "--quick", "--no-water"]).stdout.split()[0])
    _run(
        [
            "-m",
            f"examples.benchmark.{framework}_part",
            f"--data={data}",
            f"--out={out}",
            "--quick",
            "--members=2",
            f"--jobs={os.environ.get('EIP_BENCH_JOBS', '2')}",
        ]
    )
    return json.loads((out / framework / "results.json").read_text())


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def check_every_method_and_metric_is_finite(results: dict) -> None:
    metrics = results["metrics"]
    assert set(metrics) == set(METHODS)
    for split in SPLITS:
        plain = metrics["plain"][split]
        assert _finite(plain["force_mae"]) and _finite(plain["force_rmse"])
        for method in UQ_METHODS:
            row = metrics[method][split]
            for key in METRICS:
                assert _finite(row.get(key)), (method, split, key, row.get(key))
            assert 0.0 <= row["ce"] <= 1.0 and -1.0 <= row["spearman"] <= 1.0
            assert 0.0 <= row["roc_auc"] <= 1.0 and row["energy_score"] > 0.0
            assert len(row["reliability_observed"]) == 99


def check_covariances_rotate_except_eip(results: dict, tolerance: float) -> None:
    """e2ip, mve and the ensemble rotate within ``tolerance`` (relative); eip does not."""
    metrics = results["metrics"]
    for split in SPLITS:
        equivariant = [metrics[m][split]["rotational_error"] for m in EQUIVARIANT]
        assert max(equivariant) < tolerance, (split, equivariant)
        assert metrics["eip"][split]["rotational_error"] > 10 * max(equivariant)


def check_cost_ratios(results: dict) -> None:
    for method in COSTED:
        train = results["training"][method]
        assert _finite(train["epoch_s"]) and train["epoch_s"] > 0
        assert _finite(train["epoch_ratio_to_plain"]) and _finite(train["peak_rss_mb"])
        for level in ("model", "calculator"):
            inf = results["inference"][level]
            assert _finite(inf["ratio_to_plain"][method]) and inf["ratio_to_plain"][method] > 0
            assert _finite(inf["speedup_vs_ensemble"][method])
    assert results["training"]["plain"]["epoch_ratio_to_plain"] == 1.0
    # the feature-distance term timed against the same model without it; the calibration pass
    assert _finite(results["inference"]["distance_term"]["ratio"])
    for head in ("e2ip", "eip", "mve"):
        assert _finite(results["training"][head]["calibration_s"])
    # interleaved rounds: every method timed the same number of times
    rounds = {len(v) for v in results["inference"]["raw_cpu_s"].values()}
    assert rounds == {results["settings"]["timing_rounds"]}


def check_attached_head_keeps_the_backbone(results: dict) -> None:
    """eip-attach on the plain model: the same forces (so the same MAE on every split)."""
    attach = results["attach"]
    assert attach["report"]["before"]["force_mae"] == attach["report"]["after"]["force_mae"]
    assert _finite(attach["wall_s"]) and attach["wall_s"] > 0
    for split in SPLITS:
        plain = results["metrics"]["plain"][split]["force_mae"]
        attached = results["metrics"][ATTACHED][split]["force_mae"]
        assert math.isclose(attached, plain, rel_tol=1e-9), (split, attached, plain)


def check_calibration_variants(results: dict) -> None:
    """The calibrated e2ip differs from the head as trained, which has no feature distance, and
    from the Gaussian distance alone (the default stores training atoms for the neighbour
    distance) and from the head without the force prior; the variants keep e2ip's forces."""
    metrics = results["metrics"]
    for split in SPLITS:
        e2ip = metrics["e2ip"][split]
        for variant in CALIBRATION_VARIANTS:
            assert math.isclose(metrics[variant][split]["force_mae"], e2ip["force_mae"])
        assert metrics["e2ip_as_trained"][split]["mean_uncertainty"] != e2ip["mean_uncertainty"]
        assert metrics["e2ip_gaussian"][split]["mean_uncertainty"] != e2ip["mean_uncertainty"]
        assert metrics["e2ip_no_prior"][split]["mean_uncertainty"] != e2ip["mean_uncertainty"]


def check_report_tables_and_plots(results: dict, framework: str, out: Path) -> None:
    from .report import write_report

    text = write_report(out, {framework: results}, {"summary": "test"})
    labels = ("plain", "ensemble ×2", "ensemble ×2 (iso.)", "e2ip", "eip", "mve", "e2ip attached")
    for label in labels:
        assert f"| {label} |" in text
    rows = [line for line in text.splitlines() if "| ensemble ×2 |" in line]
    assert rows and all("–" not in line for line in rows)  # every metric filled in
    assert (out / "results.json").exists() and (out / "cost_bars.png").exists()
    assert (out / f"{framework}_sigma_vs_error_e2ip.png").exists()
    assert (out / f"{framework}_reliability_test_hot.png").exists()
    assert "Issue 11 targets" in text and "| 1200 K (hot) | e2ip attached |" in text
