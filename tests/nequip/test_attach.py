"""eip-attach nequip: head-only training on a frozen, already trained plain NequIP model.

The plain model is trained in the test by ``nequip-train`` (the benchmark's plain config), the
head is attached through the ``eip-attach`` console script, and the result goes through
``nequip-package``, ``nequip-compile --target ase_uq`` and ``NequIPUQCalculator``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from nequip_helpers import BIN, DATA, NEQUIP_PACKAGE, compile_args, plain_train_args, run_cli

from eip_plugins.attach import AttachError
from eip_plugins.core.metrics import spearman
from eip_plugins.evaluation import collect_predictions
from eip_plugins.nequip import NequIPUQCalculator
from eip_plugins.nequip.attach import attach_head, load_original

EIP_ATTACH = str(BIN / "eip-attach")


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _attach_cli(model, output, *extra, train=DATA / "ethanol_train.xyz", check=True, cwd=None):
    cmd = [EIP_ATTACH, "nequip", "--model", model, "--train_file", train, "--output", output]
    return run_cli([*cmd, *extra], cwd=cwd or Path(output).parent, check=check)


@pytest.fixture(scope="module")
def attached(tmp_path_factory) -> dict:
    """A plain NequIP model trained by nequip-train, then an e2ip head attached to it."""
    workdir = tmp_path_factory.mktemp("nequip_attach")
    run_dir = workdir / "plain"
    run_cli(
        plain_train_args(
            run_dir,
            8,
            "++training_module.model.num_layers=2",
            "++training_module.model.num_features=16",
        ),
        cwd=workdir,
    )
    plain = run_dir / "best.ckpt"
    digest = _sha(plain)
    out = workdir / "plain_e2ip.ckpt"
    proc = _attach_cli(
        plain,
        out,
        "--valid_file",
        DATA / "ethanol_valid.xyz",
        "--max_epochs",
        "60",
        "--report",
        workdir / "report.json",
    )
    return {
        "workdir": workdir,
        "plain": plain,
        "plain_sha": digest,
        "model": out,
        "report": json.loads((workdir / "report.json").read_text()),
        "stdout": proc.stdout,
    }


def _predict(path, frames) -> dict[str, torch.Tensor]:
    from eip_plugins.nequip.attach import _predict as predict

    return predict(load_original(path), frames, "REF_forces")


def test_backbone_predictions_are_bit_identical(attached):
    frames = ase.io.read(DATA / "ethanol_test_1200K.xyz", ":20")
    plain, with_head = _predict(attached["plain"], frames), _predict(attached["model"], frames)
    assert torch.equal(plain["energy"], with_head["energy"])
    assert torch.equal(plain["forces"], with_head["forces"])
    assert _sha(attached["plain"]) == attached["plain_sha"]  # the input file is untouched
    rep = attached["report"]
    assert rep["before"]["force_mae"] == pytest.approx(rep["after"]["force_mae"], rel=1e-12)
    # by default the head reads both layers' features (the last is scalars only), and the
    # checkpoint says so: the builder's own default (one layer) is for models saved before
    assert rep["features"].startswith("node features of 'layer0_convnet', 'layer1_convnet' (")
    assert "1o" in rep["features"]
    assert "Spearman" in attached["stdout"] and "layer1_convnet" in attached["stdout"]
    model_config = torch.load(attached["model"], weights_only=False)["hyper_parameters"]["model"]
    assert model_config["feature_layer"] == "all"
    calibration = rep["calibration"]  # the attached head is calibrated as well
    assert calibration["statistics"]["atoms_per_species"] == [600, 1800, 300]  # C, H, O
    assert calibration["variance_scale"] != 1.0


def test_sigma_ranks_errors_on_the_hot_split(attached):
    calc = NequIPUQCalculator.from_saved_model(attached["model"])
    pred = collect_predictions(calc, ase.io.read(DATA / "ethanol_test_1200K.xyz", ":"))
    err = np.linalg.norm(pred["forces"] - pred["forces_ref"], axis=1)
    rho = spearman(torch.tensor(pred["sigma"]), torch.tensor(err))
    assert rho > 0.3, rho
    assert np.all(np.linalg.eigvalsh(pred["e2ip_psi"]) > 0)  # raw fields pass through


def _results(calc, atoms) -> dict:
    atoms = atoms.copy()
    atoms.calc = calc
    atoms.get_forces()
    return dict(calc.results)


def test_round_trip_through_package_and_compile(attached):
    workdir = attached["workdir"]
    package = workdir / "plain_e2ip.nequip.zip"
    run_cli([NEQUIP_PACKAGE, "build", attached["model"], package], cwd=workdir)
    compiled = workdir / "plain_e2ip.nequip.pt2"
    run_cli(compile_args(attached["model"], compiled), cwd=workdir)

    atoms = ase.io.read(DATA / "ethanol_test_300K.xyz", 0)
    ref = _results(NequIPUQCalculator.from_saved_model(attached["model"]), atoms)
    packaged = _results(NequIPUQCalculator.from_saved_model(package), atoms)
    aoti = _results(NequIPUQCalculator.from_compiled_model(compiled), atoms)
    assert np.all(ref["forces_feature_distance"] > 0)
    for key in ("forces", "forces_uncertainty", "forces_epistemic_cov", "forces_feature_distance"):
        np.testing.assert_array_equal(packaged[key], ref[key])
        np.testing.assert_allclose(aoti[key], ref[key], rtol=1e-4, atol=1e-6)


def test_attach_to_a_package_and_replace_the_head(attached, tmp_path):
    """A packaged model (how foundation models are shipped) as input; --replace swaps heads."""
    package = tmp_path / "plain.nequip.zip"
    run_cli([NEQUIP_PACKAGE, "build", attached["plain"], package], cwd=tmp_path)
    out = tmp_path / "from_package.ckpt"
    # features streamed from disk past 200 atoms (a data set larger than memory)
    _attach_cli(package, out, "--head", "eip", "--max_epochs", "3", "--max_atoms_in_memory", "200")
    frames = ase.io.read(DATA / "ethanol_test_300K.xyz", ":5")
    a, b = _predict(attached["plain"], frames), _predict(out, frames)
    assert torch.equal(a["forces"], b["forces"]) and torch.equal(a["energy"], b["energy"])
    ck = torch.load(out, map_location="cpu", weights_only=False)
    assert ck["hyper_parameters"]["model"]["head"] == "eip"
    data_file = ck["hyper_parameters"]["info_dict"]["data"]["train_file_path"]
    assert Path(data_file) == (DATA / "ethanol_train.xyz").resolve()
    # nequip-compile traces on a structure of that data (the package's own data is not at hand)
    compiled = tmp_path / "from_package.nequip.pt2"
    run_cli(compile_args(out, compiled), cwd=tmp_path)
    atoms = ase.io.read(DATA / "ethanol_test_300K.xyz", 0)
    aoti = _results(NequIPUQCalculator.from_compiled_model(compiled), atoms)
    np.testing.assert_allclose(aoti["forces"], b["forces"][: len(atoms)].numpy(), atol=1e-5)

    replaced = tmp_path / "replaced.ckpt"
    _attach_cli(out, replaced, "--head", "mve", "--replace", "--max_epochs", "3")
    model_cfg = torch.load(replaced, map_location="cpu", weights_only=False)["hyper_parameters"]
    assert model_cfg["model"]["head"] == "mve"
    assert model_cfg["model"]["backbone"]["_target_"] == "nequip.model.NequIPGNNModel"
    c = _predict(replaced, frames)
    assert torch.equal(a["forces"], c["forces"])


def _cli_error(model, output, train, cwd) -> str:
    proc = _attach_cli(model, output, train=train, check=False, cwd=cwd)
    out = proc.stdout
    assert proc.returncode == 2, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    return out


def test_bad_input(attached, tmp_path):
    plain, with_head = attached["plain"], attached["model"]
    train = DATA / "ethanol_train.xyz"
    out = tmp_path / "o.ckpt"

    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"this is not a model")
    assert "is not a NequIP checkpoint" in _cli_error(junk, out, train, tmp_path)
    not_nequip = tmp_path / "dict.ckpt"
    torch.save({"state_dict": {}}, not_nequip)
    with pytest.raises(AttachError, match="is not a NequIP checkpoint"):
        attach_head(not_nequip, train, out)
    fake_pt2 = tmp_path / "model.nequip.pt2"
    fake_pt2.write_bytes(b"")
    with pytest.raises(AttachError, match="compiled .AOTInductor. model"):
        attach_head(fake_pt2, train, out)
    fake_package = tmp_path / "model.nequip.zip"
    fake_package.write_bytes(b"PK not really a zip")
    with pytest.raises(AttachError, match="is not a nequip-package file"):
        attach_head(fake_package, train, out)
    with pytest.raises(AttachError, match="already has an evidential 'e2ip' head.*--replace"):
        attach_head(with_head, train, out)

    alien = ase.io.read(train, ":3")
    alien[1].numbers[0] = 14
    ase.io.write(tmp_path / "alien.xyz", alien)
    msg = _cli_error(plain, out, tmp_path / "alien.xyz", tmp_path)
    assert "structure 1 contains element(s) ['Si']" in msg

    no_forces = ase.io.read(train, ":3")
    del no_forces[2].arrays["REF_forces"]
    ase.io.write(tmp_path / "noforces.xyz", no_forces)
    with pytest.raises(
        AttachError, match=r"structure 2 has no forces under arrays\['REF_forces'\]"
    ):
        attach_head(plain, tmp_path / "noforces.xyz", out)
    with pytest.raises(AttachError, match="--output must differ from --model"):
        attach_head(plain, train, plain)
    with pytest.raises(AttachError, match="give a '.ckpt' path"):
        attach_head(plain, train, tmp_path / "o.model")
    with pytest.raises(AttachError, match="feature_layer=5 is out of range"):
        attach_head(plain, train, out, feature_layer=5, max_epochs=1)
    with pytest.raises(ValueError, match="quantile"):
        attach_head(plain, train, out, head="eip", head_options={"quantile": 1.5})

    from eip_plugins.nequip.calibration import calibrate_checkpoint

    with pytest.raises(AttachError, match="plain NequIP model without an evidential head"):
        calibrate_checkpoint(plain, train, None, out)

    assert _sha(plain) == attached["plain_sha"]
    assert not out.exists() and not list(tmp_path.glob(".o.ckpt.*"))


def test_nequip_compile_target_ase_uq_refuses_a_plain_model_in_one_line(attached, tmp_path):
    """``--target ase_uq`` needs a head: one line naming the file and what to do, exit 1, no
    output written (the other bad model files are in the bad-input sweep)."""
    out = tmp_path / "plain.nequip.pt2"
    proc = run_cli(compile_args(attached["plain"], out), cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stdout, proc.stdout[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("nequip-compile: error: ") and "plain NequIP model without an " in last
    assert "eip-attach nequip" in last and "--target ase" in last
    assert not out.exists() and _sha(attached["plain"]) == attached["plain_sha"]
