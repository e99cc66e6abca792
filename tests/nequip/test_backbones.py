"""NequIP backbones beyond the suite's l_max = 1 models. Scalar-only (``l_max: 0``):
``config_with_eip`` trains them with a head that builds its vector features from the neighbour
list, and ``eip-attach nequip`` gives a plain one (checkpoint or ``nequip-package`` file) a head
with bit-identical energies and forces. ``l_max: 2``: the head reads the 1o and 2e features."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
import torch
from calculator_checks import assert_same_results
from nequip_helpers import (
    BIN,
    DATA,
    NEQUIP_PACKAGE,
    calculator_results,
    compile_args,
    plain_train_args,
    run_cli,
    run_parallel,
    train_args,
)

from eip_plugins.core import keys
from eip_plugins.core.udd import UDDConfig
from eip_plugins.nequip import NequIPUQCalculator
from eip_plugins.nequip.attach import _predict, load_original
from eip_plugins.nequip.calibration import head_of
from eip_plugins.nequip.head_module import evidential_head_outputs

EIP_ATTACH = str(BIN / "eip-attach")
EIP_CALIBRATE = str(BIN / "eip-calibrate")
SCALAR = ["++training_module.model.l_max=0"]


@pytest.fixture(scope="module")
def scalar_runs(tmp_path_factory) -> dict:
    """Concurrently: config_with_eip with l_max: 0 (e2ip, 2 epochs), a plain one-layer l_max: 0
    model (the benchmark's plain config), which is then packaged, and config_with_eip with
    l_max: 2 (e2ip, 1 epoch)."""
    root = tmp_path_factory.mktemp("nequip_scalar")
    trained, plain, l2 = root / "e2ip", root / "plain", root / "l2"
    plain_cmd = plain_train_args(
        plain,
        2,
        "++training_module.model.num_layers=1",
        "++training_module.model.num_features=16",
        *SCALAR,
    )
    l2_cmd = train_args(l2, "e2ip", 1, "++training_module.model.l_max=2")
    run_parallel(
        [
            (train_args(trained, "e2ip", 2, *SCALAR), root / "e2ip_log"),
            (plain_cmd, root / "plain_log"),
            (l2_cmd, root / "l2_log"),
        ]
    )
    package = root / "plain.nequip.zip"
    run_cli(
        [NEQUIP_PACKAGE, "build", plain / "best.ckpt", package],
        cwd=root,
    )
    return {
        "trained": trained / "best.ckpt",
        "plain": plain / "best.ckpt",
        "package": package,
        "l2": l2 / "best.ckpt",
    }


def _rotation(seed: int = 0) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


def test_config_with_eip_trains_a_scalar_only_model(scalar_runs):
    model = load_original(scalar_runs["trained"])
    head = head_of(model)
    assert head.geometry is not None and head.irreps_in.endswith("x0e")
    assert "1o" not in head.irreps_in and head.head_irreps.endswith("16x1o+16x2e")
    calc = NequIPUQCalculator.from_saved_model(scalar_runs["trained"])
    atoms = ase.io.read(DATA / "ethanol_test_300K.xyz", 0)
    base = calculator_results(calc, atoms)
    rot = _rotation()
    moved = atoms.copy()
    moved.positions = atoms.positions @ rot.T
    turned = calculator_results(calc, moved)  # a float32 model: equivariant to float32 precision
    np.testing.assert_allclose(turned["forces_uncertainty"], base["forces_uncertainty"], 1e-4)
    expected = rot @ base["forces_aleatoric_cov"] @ rot.T
    scale = np.abs(expected).max()
    np.testing.assert_allclose(turned["forces_aleatoric_cov"], expected, rtol=0, atol=1e-4 * scale)


@pytest.mark.parametrize("source", ["trained", "l2"], ids=["l_max=0", "l_max=2"])
def test_calculators_torchscript_head_gives_the_eager_heads_results(scalar_runs, source):
    """from_saved_model runs the head as TorchScript (a model passed to the constructor keeps
    its eager head): every result, UDD's bias forces included, equals the eager head's to float32
    rounding, over three calls (TorchScript optimises its graph after its first runs)."""
    udd = UDDConfig(D=1e4)
    scripted = NequIPUQCalculator.from_saved_model(scalar_runs[source], udd=udd)
    eager = NequIPUQCalculator.from_saved_model(
        scalar_runs[source], udd=udd, torchscript_head=False
    )
    (output,) = evidential_head_outputs(scripted.model)
    assert isinstance(output.head, torch.jit.ScriptModule)
    (output,) = evidential_head_outputs(eager.model)
    assert not isinstance(output.head, torch.jit.ScriptModule)
    user_model = load_original(scalar_runs[source]).eval()
    NequIPUQCalculator(user_model)
    assert not isinstance(head_of(user_model), torch.jit.ScriptModule)
    frames = [*ase.io.read(DATA / "ethanol_test_300K.xyz", ":2")]
    frames.append(ase.io.read(DATA / "ethanol_test_1200K.xyz", 1))
    assert "udd_bias_forces" in calculator_results(scripted, frames[0])
    assert_same_results(scripted, eager, frames, rtol=1e-5)


@pytest.mark.parametrize(
    "source, head", [("plain", "e2ip"), ("package", "eip")], ids=["checkpoint", "package"]
)
def test_attach_to_a_scalar_only_model(scalar_runs, source, head, tmp_path):
    out = tmp_path / f"{head}.ckpt"
    cmd = [EIP_ATTACH, "nequip", "--model", scalar_runs[source], "--head", head]
    cmd += ["--train_file", DATA / "ethanol_train.xyz", "--output", out, "--max_epochs", "3"]
    proc = run_cli(cmd, cwd=tmp_path)
    assert "'layer0_convnet'" in proc.stdout  # the only (last) layer
    assert "16x1o + 16x2e built from the neighbour list" in proc.stdout
    frames = ase.io.read(DATA / "ethanol_test_1200K.xyz", ":6")
    before = _predict(load_original(scalar_runs["plain"]), frames, "REF_forces")
    after = _predict(load_original(out), frames, "REF_forces")
    assert torch.equal(before["forces"], after["forces"])
    assert torch.equal(before["energy"], after["energy"])
    calc = NequIPUQCalculator.from_saved_model(out)
    assert np.isfinite(calculator_results(calc, frames[0])["forces_uncertainty"]).all()


def test_never_refuses_a_scalar_only_model(scalar_runs, tmp_path):
    cmd = [EIP_ATTACH, "nequip", "--model", scalar_runs["plain"], "--output", tmp_path / "o.ckpt"]
    cmd += ["--train_file", DATA / "ethanol_train.xyz", "--eip_geometric_features", "never"]
    proc = run_cli(cmd, cwd=tmp_path, check=False)
    assert proc.returncode == 2
    last = proc.stdout.strip().splitlines()[-1]
    assert "geometric_features='never'" in last and "'layer0_convnet'" in last
    assert not (tmp_path / "o.ckpt").exists()


def test_l2_model_reads_its_2e_features_and_attaches(scalar_runs, tmp_path):
    """l_max: 2: the head reads layer0's 1o and 2e features (no geometric front end); the
    calculator gives SPD covariances; eip-attach --replace trains a new head on its backbone
    (energies and forces verified identical by eip-attach before it writes)."""
    head = head_of(load_original(scalar_runs["l2"]))
    assert head.geometry is None and "2e" in head.irreps_in and head.covariance.has_l2
    calc = NequIPUQCalculator.from_saved_model(scalar_runs["l2"])
    results = calculator_results(calc, ase.io.read(DATA / "ethanol_test_300K.xyz", 0))
    assert np.all(np.linalg.eigvalsh(results["forces_aleatoric_cov"]) > 0)
    out = tmp_path / "l2_eip.ckpt"
    cmd = [EIP_ATTACH, "nequip", "--model", scalar_runs["l2"], "--replace", "--head", "eip"]
    cmd += ["--train_file", DATA / "ethanol_train.xyz", "--output", out, "--max_epochs", "2"]
    proc = run_cli(cmd, cwd=tmp_path)
    assert "'layer0_convnet'" in proc.stdout and "2e" in proc.stdout
    assert "neighbour list" not in proc.stdout


def test_packaged_l2_head_gives_the_checkpoints_results(scalar_runs, tmp_path):
    """nequip-package of the l_max = 2 e2ip checkpoint: the package gives the checkpoint's
    energies, forces and uncertainties to the bit."""
    package = tmp_path / "l2_e2ip.nequip.zip"
    run_cli([NEQUIP_PACKAGE, "build", scalar_runs["l2"], package], cwd=tmp_path)
    atoms = ase.io.read(DATA / "ethanol_test_300K.xyz", 1)
    eager = calculator_results(NequIPUQCalculator.from_saved_model(scalar_runs["l2"]), atoms)
    packaged = calculator_results(NequIPUQCalculator.from_saved_model(str(package)), atoms)
    for key in ("energy", "forces", "forces_uncertainty", "forces_epistemic_cov"):
        np.testing.assert_array_equal(packaged[key], eager[key])


def test_compiled_l2_head_with_neighbours_gives_the_checkpoints_results(scalar_runs, tmp_path):
    """nequip-compile --target ase_uq (AOTInductor) of the l_max = 2 e2ip checkpoint (every
    layer's features), refitted by eip-calibrate with stored training atoms
    (``--density_neighbours``): the compiled model gives the eager energies, forces,
    covariances and feature distances (float32 compile tolerance), and its covariances are
    SPD."""
    banked, compiled = tmp_path / "l2_neighbours.ckpt", tmp_path / "l2_e2ip.nequip.pt2"
    cmd = [EIP_CALIBRATE, "nequip", "--model", scalar_runs["l2"], "--output", banked]
    cmd += ["--train_file", DATA / "ethanol_train.xyz", "--density_neighbours", "32"]
    run_cli(cmd, cwd=tmp_path)
    assert head_of(load_original(banked)).density.bank.shape[0] == 3 * 32
    run_cli(compile_args(banked, compiled), cwd=tmp_path)
    atoms = ase.io.read(DATA / "ethanol_test_1200K.xyz", 2)
    eager = calculator_results(NequIPUQCalculator.from_saved_model(banked), atoms)
    calc = NequIPUQCalculator.from_compiled_model(str(compiled), device="cpu")
    result = calculator_results(calc, atoms)
    fields = (keys.FORCES_UNCERTAINTY, keys.FORCES_EPISTEMIC_COV, keys.FORCES_FEATURE_DISTANCE)
    for key in ("energy", "forces", *fields):
        # float32: off-diagonal covariance entries to the rounding of the whole matrix
        scale = np.abs(eager[key]).max() if key == keys.FORCES_EPISTEMIC_COV else 0.01
        np.testing.assert_allclose(result[key], eager[key], rtol=1e-4, atol=1e-4 * scale)
    assert np.all(np.linalg.eigvalsh(result[keys.FORCES_ALEATORIC_COV]) > 0)
