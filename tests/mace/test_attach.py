"""eip-attach mace: head-only training on a frozen, already trained plain MACE model."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from mace_helpers import BIN, cli_env, evaluate, run_cli, train

from eip_plugins.core.metrics import spearman
from eip_plugins.evaluation import collect_predictions
from eip_plugins.mace import MACEUQCalculator

EIP_ATTACH = str(BIN / "eip-attach")


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def attached(tmp_path_factory, data) -> dict:
    """A plain MACE model trained with MACE's CLI, then an e2ip head attached to it."""
    workdir = tmp_path_factory.mktemp("attach")
    train(workdir, data, "plain", ["--max_num_epochs=8"])
    plain = workdir / "plain.model"
    digest = _sha(plain)
    out = workdir / "plain_e2ip.model"
    proc = run_cli(
        [
            EIP_ATTACH,
            "mace",
            "--model",
            plain,
            "--train_file",
            data["train"],
            "--valid_file",
            data["valid"],
            "--head",
            "e2ip",
            "--output",
            out,
            "--max_epochs",
            "60",
            "--report",
            workdir / "report.json",
            "--energy_key=REF_energy",  # as in mace_run_train: accepted, not used
        ],
        workdir,
    )
    assert "--energy_key=REF_energy is not used" in proc.stdout + proc.stderr
    return {
        "workdir": workdir,
        "plain": plain,
        "plain_sha": digest,
        "model": out,
        "report": json.loads((workdir / "report.json").read_text()),
        "stdout": proc.stdout,
    }


def _forward(model_path: Path, frames):
    from eip_plugins.mace.features import frames_to_batches

    model = torch.load(model_path, map_location="cpu", weights_only=False)
    backbone = getattr(model, "model", model) if hasattr(model, "eip_head_kind") else model
    out = []
    for batch in frames_to_batches(backbone, frames, "REF_forces", None, 8):
        res = model(batch.to_dict(), training=False, compute_force=True)
        out.append((res["energy"].detach().numpy(), res["forces"].detach().numpy()))
    return out


def test_backbone_predictions_are_bit_identical(attached, data):
    frames = ase.io.read(data["test_1200K"], ":20")
    for (e0, f0), (e1, f1) in zip(
        _forward(attached["plain"], frames), _forward(attached["model"], frames), strict=True
    ):
        np.testing.assert_array_equal(e0, e1)
        np.testing.assert_array_equal(f0, f1)
    assert _sha(attached["plain"]) == attached["plain_sha"]  # the input file is untouched
    rep = attached["report"]
    assert rep["before"]["force_mae"] == pytest.approx(rep["after"]["force_mae"], rel=1e-12)
    assert "Spearman" in attached["stdout"] and "CE" in attached["stdout"]
    # the attached head is calibrated: statistics of the training atoms, a fitted scale
    calibration = rep["calibration"]
    assert sum(calibration["statistics"]["atoms_per_species"]) == 150 * 9
    assert calibration["variance_scale"] != 1.0 and "calibration: c =" in attached["stdout"]
    head = torch.load(attached["model"], map_location="cpu", weights_only=False).head
    assert head.density.fitted
    assert float(head.variance_scale.scale) == pytest.approx(
        calibration["variance_scale"], rel=1e-6
    )


def test_sigma_ranks_errors_on_the_hot_split(attached, data):
    calc = MACEUQCalculator(model_paths=str(attached["model"]), default_dtype="float64")
    pred = collect_predictions(calc, ase.io.read(data["test_1200K"], ":"))
    err = np.linalg.norm(pred["forces"] - pred["forces_ref"], axis=1)
    rho = spearman(torch.tensor(pred["sigma"]), torch.tensor(err))
    assert rho > 0.3, rho
    cov = pred["e2ip_psi"]
    assert np.all(np.linalg.eigvalsh(cov) > 0)


def test_round_trip_through_eval_configs_and_torchscript(attached, data, tmp_path):
    frames = evaluate(tmp_path, attached["model"], data["test_300K"], "eval.xyz")
    assert "MACE_forces_uncertainty" in frames[0].arrays
    assert np.isfinite(frames[0].arrays["MACE_forces_epistemic_cov"]).all()
    from e3nn.util import jit

    model = torch.load(attached["model"], map_location="cpu", weights_only=False)
    scripted = jit.compile(model)
    path = tmp_path / "attached_compiled.model"
    torch.jit.save(scripted, path)
    calc = MACEUQCalculator(model_paths=str(path), default_dtype="float64")
    eager = MACEUQCalculator(model_paths=str(attached["model"]), default_dtype="float64")
    atoms = ase.io.read(data["test_300K"], 0)
    atoms.calc = calc
    atoms.get_forces()
    assert calc.results["forces_epistemic_cov"].shape == (len(atoms), 3, 3)
    for key in ("forces_feature_distance", "forces_uncertainty"):
        expected = eager.get_property(key, atoms.copy())
        assert np.all(expected > 0)
        np.testing.assert_allclose(calc.results[key], expected, rtol=1e-6)


def _attach_error(args, cwd) -> str:
    proc = run_cli([EIP_ATTACH, "mace", *args], cwd, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") <= 2 and "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr


def test_bad_input(attached, data, tmp_path):
    plain, with_head = attached["plain"], attached["model"]
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"this is not a model")
    common = ["--train_file", str(data["tiny_train"]), "--output", str(tmp_path / "o.model")]
    assert "is not a MACE model file" in _attach_error(["--model", str(junk), *common], tmp_path)
    msg = _attach_error(["--model", str(with_head), *common], tmp_path)
    assert "already has an evidential 'e2ip' head" in msg and "--replace" in msg

    alien = ase.io.read(data["tiny_train"], ":3")
    alien[1].numbers[0] = 14
    ase.io.write(tmp_path / "alien.xyz", alien)
    msg = _attach_error(
        [
            "--model",
            str(plain),
            "--train_file",
            str(tmp_path / "alien.xyz"),
            "--output",
            str(tmp_path / "o.model"),
        ],
        tmp_path,
    )
    assert "structure 1 contains element(s) ['Si']" in msg

    no_forces = ase.io.read(data["tiny_train"], ":3")
    del no_forces[2].arrays["REF_forces"]
    ase.io.write(tmp_path / "noforces.xyz", no_forces)
    msg = _attach_error(
        [
            "--model",
            str(plain),
            "--train_file",
            str(tmp_path / "noforces.xyz"),
            "--output",
            str(tmp_path / "o.model"),
        ],
        tmp_path,
    )
    assert "structure 2 has no forces under arrays['REF_forces']" in msg

    msg = _attach_error(
        ["--model", str(plain), "--train_file", str(data["tiny_train"]), "--output", str(plain)],
        tmp_path,
    )
    assert "--output must differ from --model" in msg
    assert _sha(plain) == attached["plain_sha"]
    assert not (tmp_path / "o.model").exists()


def test_replace_swaps_the_head(attached, data, tmp_path):
    out = tmp_path / "replaced.model"
    run_cli(
        [
            EIP_ATTACH,
            "mace",
            "--model",
            attached["model"],
            "--train_file",
            data["tiny_train"],
            "--head",
            "eip",
            "--replace",
            "--output",
            out,
            "--max_epochs",
            "3",
        ],
        tmp_path,
        env=cli_env(),
    )
    model = torch.load(out, map_location="cpu", weights_only=False)
    assert model.eip_head_kind == "eip" and not hasattr(model.model, "eip_head_kind")


@pytest.fixture(scope="module")
def multi_head_model(tmp_path_factory, data) -> Path:
    """A two-head MACE model ('dft', 'xtb': no 'default'), trained by mace_run_train --heads."""
    from mace_helpers import COMMON_ARGS, MACE_RUN_TRAIN, MODEL_ARGS

    workdir = tmp_path_factory.mktemp("multi_head")
    frames = ase.io.read(data["tiny_train"], ":")
    valid = ase.io.read(data["tiny_valid"], ":")
    heads = {}
    for i, name in enumerate(("dft", "xtb")):
        ase.io.write(workdir / f"{name}_train.xyz", frames[i::2])
        ase.io.write(workdir / f"{name}_valid.xyz", valid[i::2])
        heads[name] = {
            "train_file": str(workdir / f"{name}_train.xyz"),
            "valid_file": str(workdir / f"{name}_valid.xyz"),
            "E0s": "average",
        }
    cmd = [MACE_RUN_TRAIN, "--name=multi", f"--heads={json.dumps(heads)}", *MODEL_ARGS]
    run_cli([*cmd, *COMMON_ARGS, "--max_num_epochs=2"], workdir)
    return workdir / "multi.model"


def test_multi_head_model(multi_head_model, data, tmp_path):
    """A foundation-style multi-head file: the head is fit to one MACE head's forces, which
    stay bit-identical, and calculators default to that MACE head."""
    from mace.calculators import MACECalculator

    msg = _attach_error(
        [
            "--model",
            str(multi_head_model),
            "--train_file",
            str(data["tiny_train"]),
            "--output",
            str(tmp_path / "o.model"),
        ],
        tmp_path,
    )
    assert "several heads ['dft', 'xtb'] and none is named 'default'" in msg
    out = tmp_path / "multi_e2ip.model"
    proc = run_cli(
        [
            EIP_ATTACH,
            "mace",
            "--model",
            multi_head_model,
            "--mace_head",
            "xtb",
            "--train_file",
            data["tiny_train"],
            "--output",
            out,
            "--max_epochs",
            "3",
        ],
        tmp_path,
    )
    assert "16x0e+16x1o+16x0e" in proc.stdout  # which features the head reads is reported
    atoms = ase.io.read(data["test_300K"], 0)
    uq = MACEUQCalculator(model_paths=str(out), default_dtype="float64")
    assert uq.head == "xtb"
    plain = MACECalculator(model_paths=str(multi_head_model), head="xtb", default_dtype="float64")
    forces = []
    for calc in (uq, plain):
        a = atoms.copy()
        a.calc = calc
        forces.append(a.get_forces())
    np.testing.assert_array_equal(forces[0], forces[1])
    with pytest.raises(ValueError, match=r"head 'pbe' is not one of the model's heads"):
        MACEUQCalculator(model_paths=str(out), head="pbe")

    from eip_plugins.mace.attach import attach_head

    # --replace keeps the MACE head the old evidential head was fit to
    replaced = tmp_path / "multi_mve.model"
    rep = attach_head(out, data["tiny_train"], replaced, head="mve", replace=True, max_epochs=2)
    assert rep["mace_head"] == "xtb"
    assert MACEUQCalculator(model_paths=str(replaced)).head == "xtb"


def test_select_mace_head_follows_mace_calculator():
    from eip_plugins.mace.heads import select_mace_head

    assert select_mace_head(["Default"]) == "Default"
    assert select_mace_head(["pt_head", "Default"]) == "Default"
    assert select_mace_head(["pt_head", "Default"], trained_on="pt_head") == "pt_head"
    assert select_mace_head(["a", "b"], requested="b", trained_on="a") == "b"
    with pytest.raises(ValueError, match=r"several heads \['a', 'b'\] and none is named"):
        select_mace_head(["a", "b"])
    with pytest.raises(ValueError, match=r"head 'c' is not one of the model's heads \['a', 'b'\]"):
        select_mace_head(["a", "b"], requested="c")
