"""MACE backbones beyond the suite's L = 1 model: scalar-only (``--max_L=0``, one layer), where the
head builds its vector features from the geometry, and L = 2 (``--max_L=2``, 1o and 2e node
features); trained with ``mace_run_train --head``, attached with ``eip-attach mace``, compiled by
MACE to TorchScript and run through ``MACEUQCalculator``."""

from __future__ import annotations

import json
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from calculator_checks import assert_same_results
from mace_helpers import (
    BIN,
    COMMON_ARGS,
    MACE_RUN_TRAIN,
    cli_env,
    log_text,
    run_cli,
    run_parallel,
)

from eip_plugins.core.udd import UDDConfig
from eip_plugins.mace import MACEUQCalculator

EIP_ATTACH = str(BIN / "eip-attach")

# MACE's scalar-only configuration: --max_L=0 gives hidden irreps '16x0e'
SCALAR_ARGS = [
    "--model=MACE",
    "--num_channels=16",
    "--max_L=0",
    "--r_max=4.0",
    "--correlation=2",
    "--max_ell=1",
    "--num_radial_basis=6",
]
# L = 2: hidden irreps '8x0e + 8x1o + 8x2e'
L2_ARGS = [
    "--model=MACE",
    "--num_channels=8",
    "--max_L=2",
    "--r_max=4.0",
    "--correlation=2",
    "--max_ell=2",
    "--num_radial_basis=6",
]


@pytest.fixture(scope="module")
def scalar_runs(tmp_path_factory, data) -> dict:
    """Concurrently: a 2-layer scalar-only MACE with --head=e2ip, a plain 1-layer scalar-only
    two-head model ('dft', 'xtb') for eip-attach, and an L = 2 MACE with --head=e2ip."""
    env = cli_env(OMP_NUM_THREADS="1")
    trained = tmp_path_factory.mktemp("scalar_e2ip")
    l2 = tmp_path_factory.mktemp("l2_e2ip")
    multi = tmp_path_factory.mktemp("scalar_multi")
    frames, valid = ase.io.read(data["tiny_train"], ":"), ase.io.read(data["tiny_valid"], ":")
    heads = {}
    for i, name in enumerate(("dft", "xtb")):
        ase.io.write(multi / f"{name}_train.xyz", frames[i::2])
        ase.io.write(multi / f"{name}_valid.xyz", valid[i::2])
        heads[name] = {
            "train_file": str(multi / f"{name}_train.xyz"),
            "valid_file": str(multi / f"{name}_valid.xyz"),
            "E0s": "average",
        }
    head_cmd = [
        MACE_RUN_TRAIN,
        "--name=scalar",
        f"--train_file={data['tiny_train']}",
        f"--valid_file={data['tiny_valid']}",
        *SCALAR_ARGS,
        "--num_interactions=2",
        *COMMON_ARGS,
        "--max_num_epochs=3",
        "--head=e2ip",
    ]
    multi_cmd = [
        MACE_RUN_TRAIN,
        "--name=multi",
        f"--heads={json.dumps(heads)}",
        *SCALAR_ARGS,
        "--num_interactions=1",
        *COMMON_ARGS,
        "--max_num_epochs=2",
    ]
    l2_cmd = [
        MACE_RUN_TRAIN,
        "--name=l2",
        f"--train_file={data['tiny_train']}",
        f"--valid_file={data['tiny_valid']}",
        *L2_ARGS,
        "--num_interactions=2",
        *COMMON_ARGS,
        "--max_num_epochs=2",
        "--head=e2ip",
    ]
    run_parallel([(head_cmd, trained, env), (multi_cmd, multi, env), (l2_cmd, l2, env)])
    return {
        "model": trained / "scalar.model",
        "compiled": trained / "scalar_compiled.model",
        "log": log_text(trained, "scalar"),
        "multi": multi / "multi.model",
        "l2": l2 / "l2.model",
        "l2_compiled": l2 / "l2_compiled.model",
    }


def _rotation(seed: int = 0) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


def _results(calc, atoms) -> dict:
    atoms = atoms.copy()
    atoms.calc = calc
    atoms.get_forces()
    return dict(calc.results)


def test_trained_head_reads_geometric_features(scalar_runs):
    assert "plus 16x1o + 16x2e geometric features" in scalar_runs["log"]
    model = torch.load(scalar_runs["model"], map_location="cpu", weights_only=False)
    assert model.node_feats_irreps == "16x0e+16x0e"
    assert model.head.geometry is not None and model.head.head_irreps.endswith("16x1o+16x2e")


@pytest.mark.parametrize("model", ["model", "l2"], ids=["scalar", "L2"])
def test_covariance_rotates_and_compiled_model_agrees(scalar_runs, data, model):
    """Sigma(R x) = R Sigma(x) R^T (float64 calculator): through MACE's neighbour list for the
    scalar model, through MACE's 1o and 2e features for L = 2; the TorchScript model of
    mace_run_train gives the eager model's uncertainty."""
    atoms = ase.io.read(data["test_300K"], 0)
    eager = MACEUQCalculator(model_paths=str(scalar_runs[model]), default_dtype="float64")
    base = _results(eager, atoms)
    rot = _rotation()
    moved = atoms.copy()
    moved.positions = atoms.positions @ rot.T
    turned = _results(eager, moved)
    np.testing.assert_allclose(turned["forces_uncertainty"], base["forces_uncertainty"], 1e-9)
    for key in ("forces_epistemic_cov", "forces_aleatoric_cov"):
        expected = rot @ base[key] @ rot.T
        scale = np.abs(expected).max()
        np.testing.assert_allclose(turned[key], expected, rtol=0, atol=1e-8 * scale)
    compiled_path = scalar_runs["compiled" if model == "model" else "l2_compiled"]
    compiled = MACEUQCalculator(model_paths=str(compiled_path), default_dtype="float64")
    np.testing.assert_allclose(
        _results(compiled, atoms)["forces_uncertainty"], base["forces_uncertainty"], rtol=1e-6
    )


def test_udd_bias_forces_are_the_gradient_of_the_bias_energy(scalar_runs, data):
    """With the limiter wide open (D large), the UDD bias force is -dE_bias/dr through the
    geometric features: it matches central finite differences and sums to zero. (The limiter
    scales a component f by exp(-f^2 / 2D^2): D = 1e8 keeps that within 1e-13 of 1 for bias
    forces up to 10^2 eV/A, so the sum is zero to float64 rounding.)"""
    atoms = ase.io.read(data["test_300K"], 0)
    udd = UDDConfig(D=1e8)
    calc = MACEUQCalculator(model_paths=str(scalar_runs["model"]), default_dtype="float64", udd=udd)
    bias = _results(calc, atoms)["udd_bias_forces"]
    assert np.isfinite(bias).all() and np.abs(bias).max() > 1e-6
    np.testing.assert_allclose(bias.sum(0), 0.0, atol=1e-7 * np.abs(bias).sum())
    # the soft minimum over the stored training atoms curves E_bias on a ~1e-3 A scale (central
    # differences on this fixture: relative error 1e-1 at h = 1e-3, 1e-3 at 1e-4, 1e-5 at 1e-5,
    # converging to the autograd force as h^2), so the step is 1e-5 A
    h = 1e-5
    for atom, axis in ((0, 0), (3, 2)):
        energies = []
        for step in (h, -h):
            moved = atoms.copy()
            moved.positions[atom, axis] += step
            energies.append(_results(calc, moved)["udd_bias_energy"])
        numeric = -(energies[0] - energies[1]) / (2 * h)
        np.testing.assert_allclose(bias[atom, axis], numeric, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("model", ["model", "l2"], ids=["scalar", "L2"])
def test_calculators_torchscript_head_gives_the_eager_heads_results(scalar_runs, data, model):
    """MACEUQCalculator runs the head as TorchScript (the default): every result, UDD's bias
    forces included, equals the eager head's to float64 rounding, over three calls (TorchScript
    optimises its graph after its first runs)."""
    udd = UDDConfig(D=1e4)
    path = str(scalar_runs[model])
    scripted = MACEUQCalculator(model_paths=path, default_dtype="float64", udd=udd)
    eager = MACEUQCalculator(
        model_paths=path, default_dtype="float64", udd=udd, torchscript_head=False
    )
    assert isinstance(scripted.model.head, torch.jit.ScriptModule)
    assert not isinstance(eager.model.head, torch.jit.ScriptModule)
    frames = [*ase.io.read(data["test_300K"], ":2"), ase.io.read(data["test_1200K"], 1)]
    assert "udd_bias_forces" in _results(scripted, frames[0])
    assert_same_results(scripted, eager, frames, rtol=1e-12)


def test_attach_to_a_scalar_only_multi_head_model(scalar_runs, data, tmp_path):
    """eip-attach on a one-layer '16x0e' two-head model: the reported features include the
    geometric ones, the MACE head's forces stay bit-identical, eip attaches as well."""
    from mace.calculators import MACECalculator

    from eip_plugins.mace.attach import attach_head

    out = tmp_path / "multi_e2ip.model"
    cmd = [EIP_ATTACH, "mace", "--model", scalar_runs["multi"], "--mace_head", "xtb"]
    cmd += ["--train_file", data["tiny_train"], "--output", out, "--max_epochs", "3"]
    proc = run_cli(cmd, tmp_path)
    assert "16x0e + 16x1o + 16x2e built from the neighbour list" in proc.stdout
    atoms = ase.io.read(data["test_300K"], 0)
    uq = MACEUQCalculator(model_paths=str(out), default_dtype="float64")
    plain = MACECalculator(
        model_paths=str(scalar_runs["multi"]), head="xtb", default_dtype="float64"
    )
    uq_results = _results(uq, atoms)
    np.testing.assert_array_equal(uq_results["forces"], _results(plain, atoms)["forces"])
    assert np.isfinite(uq_results["forces_uncertainty"]).all()

    report = attach_head(
        scalar_runs["multi"],
        data["tiny_train"],
        tmp_path / "eip.model",
        head="eip",
        mace_head="dft",
        max_epochs=2,
    )
    assert report["features"].endswith("built from the neighbour list")
    assert np.isfinite(report["after"]["nll"])


def test_l2_model_head_reads_its_2e_features_and_attaches(scalar_runs, data, tmp_path):
    """The L = 2 head reads MACE's 1o and 2e features (no geometric front end); eip-attach
    --replace trains a new head on its backbone, whose forces stay bit-identical (attach checks
    that on the written file before keeping it)."""
    from eip_plugins.mace.attach import attach_head

    model = torch.load(scalar_runs["l2"], map_location="cpu", weights_only=False)
    assert model.head.geometry is None and "8x2e" in model.node_feats_irreps
    assert model.head.covariance.has_l2
    report = attach_head(
        scalar_runs["l2"],
        data["tiny_train"],
        tmp_path / "l2_mve.model",
        head="mve",
        replace=True,
        max_epochs=2,
    )
    assert "8x2e" in report["features"] and "neighbour list" not in report["features"]
    assert np.isfinite(report["after"]["nll"])


def test_never_refuses_a_scalar_only_model(scalar_runs, data, tmp_path):
    cmd = [EIP_ATTACH, "mace", "--model", scalar_runs["multi"], "--mace_head", "xtb"]
    cmd += ["--train_file", data["tiny_train"], "--output", tmp_path / "o.model"]
    cmd += ["--eip_geometric_features", "never"]
    proc = run_cli(cmd, tmp_path, check=False)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert str(scalar_runs["multi"]) in last and "'never'" in last and "16x0e" in last
    assert not Path(tmp_path / "o.model").exists()
