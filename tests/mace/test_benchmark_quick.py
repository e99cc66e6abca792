"""The benchmark's MACE part (issue 6) end to end in ``--quick`` mode on tiny data.

Real ``mace_run_train`` runs (plain x2 for a 2-member ensemble, --head=e2ip/eip/mve, 2 epochs,
8+8 channels), then every SPEC §3 metric per method and split, and the cost ratios. Only finiteness
and structure are checked: no absolute times, no accuracy thresholds (2 epochs on ~30 frames).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # `examples` is imported from the repository root
    sys.path.insert(0, str(REPO))
UQ_METHODS = ("ensemble", "ensemble_iso", "e2ip", "eip", "mve")
METHODS = ("plain", *UQ_METHODS)
COSTED = ("plain", "ensemble", "e2ip", "eip", "mve")  # ensemble_iso: the ensemble's models
SPLITS = ("test_300K", "test_hot", "test_unseen")
UQ_METRICS = (
    "force_mae",
    "force_rmse",
    "spearman",
    "roc_auc",
    "spearman_structure",
    "roc_auc_structure",
    "nll",
    "ce",
    "miscalibration_area",
    "energy_score",
    "rotational_error",
    "mean_uncertainty",
)


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


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    # tiny molecular data (cached under examples/benchmark/cache by its settings hash)
    data = Path(_run(["-m", "examples.benchmark.data", "--quick", "--no-water"]).stdout.split()[0])
    out = tmp_path_factory.mktemp("bench")
    _run(
        [
            "-m",
            "examples.benchmark.mace_part",
            f"--data={data}",
            f"--out={out}",
            "--quick",
            "--members=2",
            f"--jobs={os.environ.get('EIP_BENCH_JOBS', '2')}",
        ]
    )
    return {"out": out, "results": json.loads((out / "mace" / "results.json").read_text())}


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def test_every_method_and_metric_is_finite(bench):
    metrics = bench["results"]["metrics"]
    assert set(metrics) == set(METHODS)
    for split in SPLITS:
        plain = metrics["plain"][split]
        assert _finite(plain["force_mae"]) and _finite(plain["force_rmse"])
        for method in UQ_METHODS:
            row = metrics[method][split]
            for key in UQ_METRICS:
                assert _finite(row.get(key)), (method, split, key, row.get(key))
            assert 0.0 <= row["ce"] <= 1.0 and -1.0 <= row["spearman"] <= 1.0
            assert 0.0 <= row["roc_auc"] <= 1.0 and row["energy_score"] > 0.0
            assert len(row["reliability_observed"]) == 99


def test_covariances_rotate_except_eip(bench):
    """e2ip, mve and the ensemble are rotation-equivariant (float64 evaluation); eip is not."""
    metrics = bench["results"]["metrics"]
    for split in SPLITS:
        equivariant = [
            metrics[m][split]["rotational_error"]
            for m in ("ensemble", "ensemble_iso", "e2ip", "mve")
        ]
        assert max(equivariant) < 1e-6, (split, equivariant)
        assert metrics["eip"][split]["rotational_error"] > 10 * max(equivariant)


def test_cost_ratios(bench):
    res = bench["results"]
    for method in COSTED:
        train = res["training"][method]
        assert _finite(train["epoch_s"]) and train["epoch_s"] > 0
        assert _finite(train["epoch_ratio_to_plain"]) and _finite(train["peak_rss_mb"])
        for level in ("model", "calculator"):
            inf = res["inference"][level]
            assert _finite(inf["ratio_to_plain"][method]) and inf["ratio_to_plain"][method] > 0
            assert _finite(inf["speedup_vs_ensemble"][method])
    assert res["training"]["plain"]["epoch_ratio_to_plain"] == 1.0
    # interleaved rounds: every method timed the same number of times
    rounds = {len(v) for v in res["inference"]["raw_cpu_s"].values()}
    assert rounds == {res["settings"]["timing_rounds"]}


def test_report_tables_and_plots(bench):
    from examples.benchmark.report import write_report

    out = bench["out"]
    text = write_report(out, {"mace": bench["results"]}, {"summary": "test"})
    for label in ("plain", "ensemble ×2", "ensemble ×2 (iso.)", "e2ip", "eip", "mve"):
        assert f"| {label} |" in text
    rows = [line for line in text.splitlines() if "| ensemble ×2 |" in line]
    assert rows and all("–" not in line for line in rows)  # every metric filled in
    assert (out / "results.json").exists() and (out / "cost_bars.png").exists()
    assert (out / "mace_sigma_vs_error_e2ip.png").exists()
    assert (out / "mace_reliability_test_hot.png").exists()
