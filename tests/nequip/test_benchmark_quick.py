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


@pytest.mark.parametrize("head", ["e2ip", "eip"])
def test_neighbours_refits_every_runs_head_and_evaluates_both(bench, head):
    """``python -m examples.benchmark.neighbours [--head eip]``: eip-calibrate
    --density_neighbours M and 0 of the run's head model, both evaluated with the benchmark's
    metrics."""
    import json

    import numpy as np

    from eip_plugins.nequip.attach import load_original
    from eip_plugins.nequip.calibration import head_of
    from examples.benchmark import neighbours

    argv = ["--framework", FRAMEWORK, "--out", str(bench["out"]), "--neighbours", "8"]
    assert neighbours.main([*argv, "--head", head]) == 0
    name = neighbours.output_name(head)
    written = json.loads((bench["out"] / FRAMEWORK / f"{name}.json").read_text())
    assert written["head"] == head and written["neighbours"] == 8
    assert len(written["runs"]) == len(written["metrics"]) >= 1
    for run in written["metrics"]:
        assert set(run) == set(neighbours.labels(head))
        for method in run.values():
            for key in neighbours.METRICS:
                assert np.isfinite([method[s][key] for s in method]).all()
    model_dir = Path(written["runs"][0])
    assert model_dir.name == head
    banked = head_of(load_original(model_dir / "best_neighbours.ckpt")).density
    gaussian = head_of(load_original(model_dir / "best_gaussian.ckpt")).density
    assert banked.bank.shape[0] > 0 and gaussian.bank.shape[0] == 0
    assert f"{head} + neighbours" in (bench["out"] / FRAMEWORK / f"{name}.md").read_text()


def test_inference_scaling_compiles_once_and_times_the_compiled_files(bench, tmp_path):
    """``inference_scaling --compiled``: each checkpoint compiled once with nequip-compile (ase
    for plain models, ase_uq for heads; a second call reuses the files), and the runners call
    the compiled files: the head's returns its uncertainty beside the plain model's forces."""
    import json

    from eip_plugins.core import keys
    from examples.benchmark import inference_scaling

    result = json.loads((bench["out"] / FRAMEWORK / "results.json").read_text())
    models = {m: result["methods"][m]["models"][:1] for m in ("plain", "e2ip")}
    folder = tmp_path / "compiled"
    files, seconds = inference_scaling.compile_nequip_models(models, folder)
    assert files["plain"][0].endswith("_ase.nequip.pt2")
    assert files["e2ip"][0].endswith("_ase_uq.nequip.pt2")
    assert all(s is not None and s > 0 for s in seconds.values())
    again, reused = inference_scaling.compile_nequip_models(models, folder)
    assert again == files and all(s is None for s in reused.values())
    frames = inference_scaling.structures(Path(result["data"]))
    size = next(iter(frames))
    runners = inference_scaling.compiled_nequip_runners(files, {size: frames[size]})[size]
    (plain,), (head,) = runners["plain"](), runners["e2ip"]()
    assert keys.FORCES_UNCERTAINTY not in plain and (head[keys.FORCES_UNCERTAINTY] > 0).all()
    assert plain["forces"].shape == head["forces"].shape == (len(frames[size]), 3)
