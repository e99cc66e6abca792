"""The backbones table (examples/benchmark/backbones.py): mean ± std over several runs, the
median training ratio, and inference_scaling's ratios where that was run."""

import json

from examples.benchmark import backbones

SPLITS = ("test_300K", "test_hot", "test_unseen")


def _part(seeds, with_scaling: bool, tmp_path):
    metrics = {
        m: {
            s: {"force_mae": 0.1, "spearman": 0.5 + 0.1 * i, "ce": 0.05}
            for i, s in enumerate(SPLITS)
        }
        for m in ("plain", "e2ip", "e2ip_attached", "ensemble", "ensemble_iso")
    }
    std = {m: {s: {"spearman": 0.02, "ce": 0.01} for s in SPLITS} for m in metrics}
    part = {
        "framework": "mace",
        "settings": {"backbone": "mace_scalar"},
        "seeds": seeds,
        "metrics": metrics,
        "metrics_std": std,
        "training": {"e2ip": {"epoch_ratio_to_plain": 1.5, "epoch_ratio_median": 1.25}},
        "inference": {"model": {"ratio_to_plain": {"e2ip": 1.4, "ensemble": 4.0}}},
    }
    folder = tmp_path / "mace_scalar" / "mace"
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(part))
    if with_scaling:
        sizes = {
            "ethanol (9 atoms)": {"ratio_to_plain": {"e2ip": 1.12, "ensemble": 4.1}},
            "water 3×3×3 (648 atoms)": {"ratio_to_plain": {"e2ip": 1.03, "ensemble": 4.2}},
        }
        (folder / "inference_scaling.json").write_text(json.dumps({"sizes": sizes}))
    return backbones.collect([tmp_path])


def test_several_runs_give_mean_and_std_and_the_median_training_ratio(tmp_path):
    table = backbones.summary_table(_part([1, 5, 9], False, tmp_path))
    row = next(line for line in table.splitlines() if "e2ip trained" in line)
    assert "0.50 ± 0.02 / 0.60 ± 0.02 / 0.70 ± 0.02" in row
    assert "| 1.40 | 1.25 |" in row  # the part's own inference ratio; the median training ratio
    assert "inference / plain (model)" in table


def test_one_run_gives_plain_values_and_scaling_replaces_the_inference_column(tmp_path):
    table = backbones.summary_table(_part([1], True, tmp_path))
    row = next(line for line in table.splitlines() if "e2ip trained" in line)
    assert "0.50 / 0.60 / 0.70" in row and "±" not in row
    assert "| 1.12 / 1.03 |" in row
    assert "inference / plain (ethanol (9 atoms) / water 3×3×3 (648 atoms))" in table
    ensemble_iso = next(line for line in table.splitlines() if "isotropic" in line)
    assert "| 4.10 / 4.20 |" in ensemble_iso  # the isotropic ensemble is the ensemble's cost
