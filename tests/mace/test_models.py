"""The saved ``*.model``, MACE's TorchScript ``*_compiled.model``, the calculator, the loss and
``--restart_latest``, on the models trained by the session fixtures."""

from __future__ import annotations

import re
import shutil
from dataclasses import replace

import ase.io
import numpy as np
import pytest
import torch
from calculator_checks import assert_converted
from mace_helpers import cli_env, feature_distances, log_text, train

from eip_plugins.core import evidential_total_loss, keys
from eip_plugins.core._e3nn import o3
from eip_plugins.core.feature_density import BANK_ROWS
from eip_plugins.mace import EvidentialLoss, MACEUQCalculator
from eip_plugins.mace.model import head_config_of

pytestmark = pytest.mark.slow

FIELDS = (
    *keys.PER_ATOM_UNCERTAINTY_KEYS,
    *keys.PER_STRUCTURE_UNCERTAINTY_KEYS,
    keys.FORCES_FEATURE_DISTANCE,
    *keys.PER_STRUCTURE_DISTANCE_KEYS,
)


def _batch(model, path, n=4):
    from mace import data as mace_data
    from mace.tools import torch_geometric, utils

    z_table = utils.AtomicNumberTable([int(z) for z in model.atomic_numbers])
    keyspec = mace_data.KeySpecification(
        info_keys={"energy": "REF_energy"}, arrays_keys={"forces": "REF_forces"}
    )
    graphs = [
        mace_data.AtomicData.from_config(
            mace_data.config_from_atoms(atoms, key_specification=keyspec),
            z_table=z_table,
            cutoff=float(model.r_max),
            heads=list(model.heads),
        )
        for atoms in ase.io.read(path, index=f":{n}")
    ]
    loader = torch_geometric.dataloader.DataLoader(graphs, batch_size=n, shuffle=False)
    batch = next(iter(loader))
    return batch, {k: v.float() if v.is_floating_point() else v for k, v in batch.to_dict().items()}


class _AttributeDict(dict):
    __getattr__ = dict.__getitem__


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def test_saved_model_returns_uncertainty(e2ip_run, data):
    model = _load(e2ip_run["model"])
    assert type(model).__name__ == "EvidentialMACE" and head_config_of(model).kind == "e2ip"
    _, d = _batch(model, data["test_300K"])
    out = model(d, compute_force=True)
    n, g = d["positions"].shape[0], 4
    assert out[keys.FORCES_UNCERTAINTY].shape == (n,)
    assert out[keys.FORCES_EPISTEMIC_COV].shape == (n, 3, 3)
    assert out[keys.FORCES_ALEATORIC_COV].shape == (n, 3, 3)
    assert out[keys.UNCERTAINTY].shape == (g,) and out[keys.UNCERTAINTY_MAX].shape == (g,)
    assert out["forces"].shape == (n, 3) and out["energy"].shape == (g,)


def test_node_feats_irreps_match_the_backbone(e2ip_run, data):
    model = _load(e2ip_run["model"])
    _, d = _batch(model, data["test_300K"])
    feats = model.model(d)["node_feats"]
    irreps = o3.Irreps(model.node_feats_irreps)
    assert feats.shape[1] == irreps.dim
    assert str(irreps) == "16x0e+16x1o+16x0e"


@pytest.mark.parametrize("head", ["e2ip", "mve"])
def test_compiled_model_returns_uncertainty(request, data, head):
    run = request.getfixturevalue(f"{head}_run")
    assert run["compiled"].is_file(), f"MACE did not write {run['compiled'].name}"
    compiled = torch.jit.load(str(run["compiled"]), map_location="cpu")
    eager = _load(run["model"])
    _, d = _batch(eager, data["test_300K"])
    out = compiled(dict(d), compute_force=True)
    ref = eager(dict(d), compute_force=True)
    for key in (*FIELDS, "forces", "energy"):
        torch.testing.assert_close(out[key], ref[key], rtol=1e-4, atol=1e-6)


def test_loss_equals_core_objective_for_unit_weights(e2ip_run, data):
    """--eip_force_objective=nll: the papers' loss, exactly the core closed form."""
    model = _load(e2ip_run["model"])
    batch, d = _batch(model, data["test_300K"])
    config = replace(head_config_of(model), force_objective="nll")
    loss_fn = EvidentialLoss(config).attach(model.head)
    out = model(d, training=True, compute_force=True)
    ref = dict(d)
    assert torch.all(ref["weight"] == 1) and torch.all(ref["forces_weight"] == 1)
    params = model.head(out["node_feats"], out["forces"], ref["node_attrs"].argmax(-1))
    num_atoms = ref["ptr"][1:] - ref["ptr"][:-1]
    expected = evidential_total_loss(
        model.head, params, ref["forces"], out["energy"], ref["energy"], num_atoms, config
    )["loss"]
    torch.testing.assert_close(loss_fn(out, ref), expected)


def test_detached_objective_trains_the_model_with_maces_own_loss(e2ip_run, data):
    """--eip_force_objective=detached (default): loss = MACE's loss + the head's evidential term,
    whose gradient with respect to every backbone parameter is exactly zero; the backbone's
    gradient is the one MACE's loss gives a plain model."""
    from mace.modules.loss import WeightedEnergyForcesLoss

    model = _load(e2ip_run["model"]).train()
    _, d = _batch(model, data["test_300K"])
    config = head_config_of(model)
    assert config.force_objective == "detached"
    mace_loss = WeightedEnergyForcesLoss(energy_weight=1.0, forces_weight=100.0)
    loss_fn = EvidentialLoss(config, mean_loss=mace_loss).attach(model.head)
    out = model(d, training=True, compute_force=True)
    ref = _AttributeDict(d)  # MACE's losses read ref.ptr, ours ref["ptr"]: a Batch does both
    total, plain = loss_fn(out, ref), mace_loss(pred=out, ref=ref)
    backbone = [p for p in model.model.parameters() if p.requires_grad]
    head = [p for p in model.head.parameters() if p.requires_grad]
    g_total = torch.autograd.grad(total, backbone + head, retain_graph=True, allow_unused=True)
    g_plain = torch.autograd.grad(plain, backbone, retain_graph=True, allow_unused=True)
    for a, b in zip(g_total[: len(backbone)], g_plain, strict=True):
        if b is None:
            assert a is None or torch.all(a == 0)
        else:
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert all(g is not None and torch.isfinite(g).all() for g in g_total[len(backbone) :])
    assert float(total - plain) != 0.0  # the evidential term is there, for the head
    with pytest.raises(ValueError, match="force_objective='detached'"):
        EvidentialLoss(config)


def test_an_optimisation_step_evaluates_the_head_once(e2ip_run, data):
    """MACE's optimisation step (module in training mode, ``training=True``): the model leaves
    the head to the loss, so the head runs once per step; in eval mode with ``training=True``
    (the calculator's UDD path) the fields are there, differentiable in the positions."""
    model = _load(e2ip_run["model"]).train()
    _, d = _batch(model, data["test_300K"])
    calls = []
    evaluate = model.head.forward_with_distance

    def counted(*args, **kwargs):
        calls.append(1)
        return evaluate(*args, **kwargs)

    model.head.forward_with_distance = counted
    config = head_config_of(model)
    from mace.modules.loss import WeightedEnergyForcesLoss

    mace_loss = WeightedEnergyForcesLoss(energy_weight=1.0, forces_weight=100.0)
    loss_fn = EvidentialLoss(config, mean_loss=mace_loss).attach(model.head)
    out = model(dict(d), training=True, compute_force=True)
    assert keys.FORCES_UNCERTAINTY not in out and not calls
    loss = loss_fn(out, _AttributeDict(d))
    loss.backward()
    assert len(calls) == 1 and torch.isfinite(loss)
    assert all(
        p.grad is not None and torch.isfinite(p.grad).all()
        for p in model.head.parameters()
        if p.requires_grad
    )
    model.eval()
    positions = d["positions"].clone().requires_grad_(True)
    out = model({**d, "positions": positions}, training=True, compute_force=True)
    assert len(calls) == 2 and all(out[key] is not None for key in FIELDS)
    (grad,) = torch.autograd.grad(out[keys.FORCES_UNCERTAINTY].sum(), positions)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_the_detached_validation_loss_is_maces_own(e2ip_run, data):
    """In MACE's evaluate (the loss's recording context) the detached objective returns MACE's
    loss alone: checkpoint selection and the LR schedule are a plain model's; the head's NLL is
    still recorded."""
    from mace.modules.loss import WeightedEnergyForcesLoss

    model = _load(e2ip_run["model"])
    _, d = _batch(model, data["test_300K"])
    mace_loss = WeightedEnergyForcesLoss(energy_weight=1.0, forces_weight=100.0)
    loss_fn = EvidentialLoss(head_config_of(model), mean_loss=mace_loss).attach(model.head)
    out = model(dict(d), training=False, compute_force=True)
    ref = _AttributeDict(d)
    with loss_fn.recording() as records:
        validation = loss_fn(out, ref)
    torch.testing.assert_close(validation, mace_loss(pred=out, ref=ref), rtol=0, atol=0)
    assert len(records["nll"]) == 1 and torch.isfinite(records["nll"][0]).all()
    assert float(loss_fn(out, ref) - validation) != 0.0  # training steps add the head's term


def test_calculator_returns_fields(e2ip_run, data):
    atoms = ase.io.read(data["test_300K"], index=0)
    calc = MACEUQCalculator(model_paths=str(e2ip_run["model"]), default_dtype="float64")
    atoms.calc = calc
    energy = atoms.get_potential_energy()
    forces = atoms.get_forces()
    ref = e2ip_run["test_300K"][0]
    assert energy == pytest.approx(ref.info["MACE_energy"], abs=1e-3)
    np.testing.assert_allclose(forces, ref.arrays["MACE_forces"], atol=1e-4)
    n = len(atoms)
    assert calc.results[keys.FORCES_UNCERTAINTY].shape == (n,)
    assert calc.results[keys.FORCES_EPISTEMIC_COV].shape == (n, 3, 3)
    assert calc.results[keys.UNCERTAINTY] == pytest.approx(ref.info["MACE_uncertainty"], rel=1e-4)
    assert calc.known_atomic_numbers == {1, 6, 8}


def test_calculator_uncertainty_is_differentiable(e2ip_run, data):
    atoms = ase.io.read(data["test_300K"], index=0)
    calc = MACEUQCalculator(model_paths=str(e2ip_run["model"]))
    out = calc.evaluate_model(atoms, keep_graph=True)
    (grad,) = torch.autograd.grad(out[keys.UNCERTAINTY].sum(), out["positions"])
    assert grad.shape == (len(atoms), 3)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    calc_udd = MACEUQCalculator(model_paths=str(e2ip_run["model"]), udd={"A": 0.5})
    atoms.calc = calc_udd
    atoms.get_forces()
    assert np.abs(calc_udd.results["udd_bias_forces"]).sum() > 0


def test_calculator_units_are_maces_own(e2ip_run, data):
    """``energy_units_to_eV`` / ``length_units_to_A`` give MACECalculator's energy, forces and
    stress with the same units (a periodic cell), and every other result of the unconverted
    calculator times its unit (:data:`calculator_checks.RESULT_UNITS`)."""
    from ase.units import kcal, mol
    from mace.calculators import MACECalculator

    units = dict(energy_units_to_eV=kcal / mol, length_units_to_A=0.5)
    path = str(e2ip_run["model"])
    atoms = ase.io.read(data["test_300K"], index=0)
    atoms.cell, atoms.pbc = [[9.0, 0.0, 0.0], [1.0, 8.0, 0.0], [0.0, 0.5, 8.5]], True  # stress
    results = {}
    for name, calc in {
        "mace": MACECalculator(model_paths=path, default_dtype="float64", **units),
        "converted": MACEUQCalculator(model_paths=path, default_dtype="float64", **units),
        "model units": MACEUQCalculator(model_paths=path, default_dtype="float64"),
    }.items():
        atoms.calc = calc
        atoms.get_forces()
        results[name] = dict(calc.results)
    converted, mace, model_units = results["converted"], results["mace"], results["model units"]
    assert converted["energy"] == pytest.approx(mace["energy"], rel=1e-12)
    for key in ("forces", "stress"):
        np.testing.assert_allclose(converted[key], mace[key], rtol=1e-10, atol=1e-12, err_msg=key)
    assert np.abs(model_units["stress"]).max() > 0
    assert_converted(converted, model_units, units["energy_units_to_eV"], 0.5, rtol=1e-12)


def test_calculator_accepts_compiled_model(mve_run, data):
    atoms = ase.io.read(data["test_300K"], index=0)
    calc = MACEUQCalculator(model_paths=str(mve_run["compiled"]))
    atoms.calc = calc
    atoms.get_forces()
    assert calc.results[keys.FORCES_UNCERTAINTY].shape == (len(atoms),)


def test_calculator_rejects_plain_model(plain_runs):
    with pytest.raises(ValueError, match="plain MACE model without an evidential head"):
        MACEUQCalculator(model_paths=str(plain_runs["default"]["workdir"] / "plain.model"))


def test_restart_latest_restores_head(e2ip_run, data, tmp_path):
    """Resuming restores the trained head: the restarted run's first validation (before any
    training) reproduces, digit for digit, the original run's validation at the checkpoint epoch.
    MACE loads checkpoints with strict=False, so a head missing from the checkpoint would silently
    stay at its fresh initialisation (and give a different NLL_F)."""
    workdir = tmp_path / "restart"
    shutil.copytree(e2ip_run["workdir"] / "checkpoints", workdir / "checkpoints")
    flags = [f for f in e2ip_run["flags"] if not f.startswith("--max_num_epochs")]
    env = cli_env(OMP_NUM_THREADS="1")
    train(workdir, data, "e2ip", [*flags, "--max_num_epochs=1", "--restart_latest"], env=env)
    log = log_text(workdir, "e2ip")
    epoch = int(re.search(r"Loading checkpoint: \S+_epoch-(\d+)\.pt", log).group(1))
    initial = re.search(r"Initial: head: Default, (loss=.*)", log).group(1)
    original = re.search(rf"Epoch {epoch}: head: Default, (loss=.*)", e2ip_run["log"]).group(1)
    assert "NLL_F=" in initial
    assert initial == original
    trained = _load(e2ip_run["model"]).head.state_dict()
    restored = _load(workdir / "e2ip.model").head.state_dict()
    for key in trained:  # no further epoch: the saved head is the checkpoint's
        if key in {f"density.{name}" for name in BANK_ROWS}:
            continue  # the stored training atoms, in the order read: compared by their distances
        if key.startswith(("density.", "variance_scale.")):
            # refitted at the end of the restarted run on the same data (loader order differs)
            torch.testing.assert_close(restored[key], trained[key], rtol=2e-4, atol=1e-5)
        else:
            torch.testing.assert_close(restored[key], trained[key], rtol=0, atol=0)
    assert float(restored["density.count"].sum()) > 0
    assert restored["density.bank"].shape == trained["density.bank"].shape
    frames = ase.io.read(data["test_1200K"], ":3")
    np.testing.assert_allclose(
        feature_distances(workdir / "e2ip.model", frames),
        feature_distances(e2ip_run["model"], frames),
        rtol=1e-3,
    )
