"""The real NequIP workflow: nequip-train -> nequip-compile --target ase_uq -> ASE calculator."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from calculator_checks import assert_converted
from nequip_helpers import DATA, EPOCHS, NLL_OBJECTIVE, run_cli, train_args
from scipy.spatial.transform import Rotation

from eip_plugins.core import keys
from eip_plugins.nequip import NequIPUQCalculator

HEADS = ["e2ip", "eip", "mve"]


def _epoch_rows(run_dir):
    (metrics,) = run_dir.glob("csv/version_*/metrics.csv")
    with open(metrics) as f:
        return list(csv.DictReader(f))


def _evaluate(calc, frames):
    out = []
    for atoms in frames:
        atoms = atoms.copy()
        atoms.calc = calc
        atoms.get_forces()
        out.append(dict(calc.results))
    return out


EVIDENTIAL_AND_NEQUIP_TERMS = ["evidential_force_loss", "per_atom_energy_mse", "forces_mse"]


@pytest.mark.slow
@pytest.mark.parametrize("head", HEADS)
def test_train_logs_uncertainty_metrics_every_epoch(runs, head):
    run_dir = runs.trained(head)
    assert (run_dir / "best.ckpt").is_file() and (run_dir / "last.ckpt").is_file()
    rows = [r for r in _epoch_rows(run_dir) if r.get("val0_epoch/force_nll")]
    names = ["force_nll", "uncertainty_spearman", "uncertainty_roc_auc", "calibration_error"]
    assert len(rows) == EPOCHS[head]  # one validation row per epoch
    for row in rows:
        for name in names:
            assert np.isfinite(float(row[f"val0_epoch/{name}"])), name
    # force_objective nll (the eip run): the evidential loss is the whole loss; detached (the
    # default): NequIP's energy/force MSE terms plus the head's evidential force term
    loss_names = ["evidential_loss"] if head in NLL_OBJECTIVE else EVIDENTIAL_AND_NEQUIP_TERMS
    for name in loss_names:
        loss_rows = [r for r in _epoch_rows(run_dir) if r.get(f"train_loss_epoch/{name}")]
        assert len(loss_rows) == EPOCHS[head], name
        assert all(np.isfinite(float(r[f"train_loss_epoch/{name}"])) for r in loss_rows)
    other = "forces_mse" if head in NLL_OBJECTIVE else "evidential_loss"
    assert not any(r.get(f"train_loss_epoch/{other}") for r in _epoch_rows(run_dir))


@pytest.mark.slow
@pytest.mark.parametrize("head", HEADS)
def test_compiled_calculator_outputs(runs, head, ethanol_300K):
    calc = NequIPUQCalculator.from_compiled_model(runs.compiled(head), device="cpu")
    assert calc.supports_udd is False
    assert calc.known_atomic_numbers == {1, 6, 8}
    ref = NequIPUQCalculator.from_saved_model(runs.trained(head) / "best.ckpt")
    results = zip(_evaluate(calc, ethanol_300K[:5]), _evaluate(ref, ethanol_300K[:5]), strict=True)
    for res, res_ref in results:
        n = len(ethanol_300K[0])
        assert res["forces"].shape == (n, 3)
        assert res[keys.FORCES_UNCERTAINTY].shape == (n,)
        assert res[keys.FORCES_EPISTEMIC_COV].shape == (n, 3, 3)
        assert res[keys.FORCES_ALEATORIC_COV].shape == (n, 3, 3)
        for k in (keys.UNCERTAINTY, keys.UNCERTAINTY_MAX):
            assert isinstance(res[k], float) and np.isfinite(res[k]) and res[k] > 0
        assert res[keys.UNCERTAINTY] <= res[keys.UNCERTAINTY_MAX] + 1e-7
        for k in ("forces", *keys.PER_ATOM_UNCERTAINTY_KEYS):
            assert np.isfinite(res[k]).all(), k
        # covariances: symmetric positive definite (mve has no epistemic part: zeros)
        covs = [keys.FORCES_ALEATORIC_COV] + ([] if head == "mve" else [keys.FORCES_EPISTEMIC_COV])
        for k in covs:
            c = res[k]
            np.testing.assert_allclose(c, np.swapaxes(c, -1, -2), atol=1e-6)
            assert np.linalg.eigvalsh(c).min() > 0, k
        # the compiled model reproduces the checkpoint
        np.testing.assert_allclose(res["energy"], res_ref["energy"], rtol=1e-6, atol=1e-4)
        np.testing.assert_allclose(res["forces"], res_ref["forces"], atol=1e-4)
        np.testing.assert_allclose(
            res[keys.FORCES_UNCERTAINTY], res_ref[keys.FORCES_UNCERTAINTY], rtol=1e-4, atol=1e-6
        )
        # the feature statistics fitted into best.ckpt are compiled in
        assert np.all(res_ref[keys.FORCES_FEATURE_DISTANCE] > 0)
        for k in (keys.FORCES_FEATURE_DISTANCE, *keys.PER_STRUCTURE_DISTANCE_KEYS):
            np.testing.assert_allclose(res[k], res_ref[k], rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_sigma_larger_out_of_distribution(runs, ethanol_300K, ethanol_1200K):
    """After a short real training run, the 1200 K frames are more uncertain than 300 K ones."""
    calc = NequIPUQCalculator.from_compiled_model(runs.compiled("e2ip"), device="cpu")
    cold = [r[keys.UNCERTAINTY] for r in _evaluate(calc, ethanol_300K[:40])]
    hot = [r[keys.UNCERTAINTY] for r in _evaluate(calc, ethanol_1200K[:40])]
    assert np.mean(hot) > np.mean(cold)
    assert np.median(hot) > np.median(cold)


@pytest.mark.slow
def test_compiled_e2ip_covariance_rotates_with_structure(runs, ethanol_300K):
    calc = NequIPUQCalculator.from_compiled_model(runs.compiled("e2ip"), device="cpu")
    for seed, atoms in enumerate(ethanol_300K[:3]):
        rot = Rotation.random(random_state=seed).as_matrix()
        rotated = atoms.copy()
        rotated.positions = atoms.positions @ rot.T
        (res,) = _evaluate(calc, [atoms])
        (res_rot,) = _evaluate(calc, [rotated])
        for k in (keys.FORCES_EPISTEMIC_COV, keys.FORCES_ALEATORIC_COV):
            expected = rot @ res[k] @ rot.T
            np.testing.assert_allclose(res_rot[k], expected, atol=1e-4 * np.abs(res[k]).max())
        np.testing.assert_allclose(res_rot["forces"], res["forces"] @ rot.T, atol=1e-4)
        np.testing.assert_allclose(
            res_rot[keys.FORCES_UNCERTAINTY], res[keys.FORCES_UNCERTAINTY], rtol=1e-4
        )


@pytest.mark.slow
def test_resume_from_last_ckpt_restores_head(runs, tmp_path):
    """++ckpt_path=last.ckpt continues the run with the trained head, not a fresh one."""
    src = runs.trained("mve")
    ckpt = torch.load(src / "last.ckpt", map_location="cpu", weights_only=False)
    head_keys = [k for k in ckpt["state_dict"] if ".head." in k]
    assert head_keys, "the checkpoint has no head parameters"
    run_dir = tmp_path / "resumed"
    run_cli(train_args(run_dir, "mve", 4, f"++ckpt_path={src / 'last.ckpt'}"), cwd=tmp_path)
    rows = [r for r in _epoch_rows(run_dir) if r.get("val0_epoch/force_nll")]
    assert [int(r["epoch"]) for r in rows] == [3]  # only the 4th epoch was run

    def losses(d, name):
        return [float(r[name]) for r in _epoch_rows(d) if r.get(name)]

    # the head's own term, logged under either force objective (mve trains detached)
    step = "train_loss_step/evidential_force_loss"
    saved_final = losses(src, "train_loss_epoch/evidential_force_loss")[-1]
    fresh_first = losses(src, step)[0]
    resumed_first = losses(run_dir, step)[0]
    # a resumed (not re-initialised) model starts where the saved run ended
    assert abs(resumed_first - saved_final) < 0.5 * abs(fresh_first - saved_final)
    # the resumed run's checkpoints are calibrated again (statistics of the same training set)
    old = ckpt["state_dict"]
    new = torch.load(run_dir / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    count = next(k for k in old if k.endswith("head.density.count"))
    assert torch.equal(new[count], old[count]) and float(old[count].sum()) > 0


@pytest.mark.slow
def test_checkpoint_calculator_supports_udd(runs, ethanol_300K):
    """A checkpoint-loaded calculator keeps the graph: the bias force is the uncertainty's gradient."""
    calc = NequIPUQCalculator.from_saved_model(
        runs.trained("e2ip") / "best.ckpt", udd={"A": 1.0, "B": 0.05}
    )
    atoms = ethanol_300K[0].copy()
    atoms.calc = calc
    atoms.get_forces()
    bias = calc.results["udd_bias_forces"]
    assert np.isfinite(bias).all() and np.abs(bias).max() > 0
    np.testing.assert_allclose(
        calc.results["forces"], calc.results["forces_unbiased"] + bias, atol=1e-10
    )


@pytest.mark.slow
def test_calculator_units_are_nequips_own(runs, ethanol_300K):
    """``energy_units_to_eV`` / ``length_units_to_A`` give NequIPCalculator's energy and forces
    with the same units (checkpoint), and the uncertainties of the unconverted calculator times
    the force unit, its square for covariances (checkpoint and compiled file)."""
    from ase.units import kcal, mol
    from nequip.integrations.ase import NequIPCalculator

    units = dict(energy_units_to_eV=kcal / mol, length_units_to_A=0.5)
    best = runs.trained("e2ip") / "best.ckpt"
    frames = ethanol_300K[:2]
    nequip = _evaluate(
        NequIPCalculator._from_saved_model(best, chemical_species_to_atom_type_map=True, **units),
        frames,
    )
    for load, path in [
        (NequIPUQCalculator.from_saved_model, best),
        (NequIPUQCalculator.from_compiled_model, runs.compiled("e2ip")),
    ]:
        converted = _evaluate(load(path, **units), frames)
        model_units = _evaluate(load(path), frames)
        for res, ref, own in zip(converted, model_units, nequip, strict=True):
            if load == NequIPUQCalculator.from_saved_model:
                assert res["energy"] == pytest.approx(own["energy"], rel=1e-12)
                np.testing.assert_allclose(res["forces"], own["forces"], rtol=1e-12)
            # the head's outputs are float32 (the model's dtype), converted in float32
            assert_converted(res, ref, units["energy_units_to_eV"], 0.5, rtol=1e-6)
            assert res["energy"] == pytest.approx(ref["energy"] * kcal / mol, rel=1e-12)


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path):
    """Lightning DDP (gloo, 2 CPU processes) with the head, loss and metrics."""
    run_dir = tmp_path / "ddp"
    proc = run_cli(
        train_args(
            run_dir,
            "e2ip",
            1,
            f"++train_file={DATA / 'ethanol_valid.xyz'}",  # 50 frames: 5 batches per rank
            "++run=[train]",
            "++trainer.devices=2",
            "++trainer.strategy=ddp",
        ),
        cwd=tmp_path,
    )
    assert "distributed_backend=gloo" in proc.stdout
    assert "Starting with 2 processes" in proc.stdout
    ckpt = torch.load(run_dir / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 5  # the 50 frames were split over 2 ranks (10 batches of 5)
    assert any(".head." in k for k in ckpt["state_dict"])
    rows = [r for r in _epoch_rows(run_dir) if r.get("val0_epoch/uncertainty_spearman")]
    assert len(rows) == 1 and np.isfinite(float(rows[0]["val0_epoch/force_nll"]))
