"""Feature statistics and recalibration of NequIP models: fitted into best.ckpt / last.ckpt by
the ``UncertaintyCalibration`` callback of ``config_with_eip``, refitted by
``eip-calibrate nequip``, and loadable from checkpoints of earlier versions."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import ase.data
import ase.io
import numpy as np
import pytest
import torch
from nequip_helpers import BIN, DATA, run_cli

from eip_plugins.calibration import DEFAULT_NEIGHBOURS
from eip_plugins.core import keys
from eip_plugins.core.feature_density import BANK_ROWS
from eip_plugins.evaluation import collect_predictions
from eip_plugins.nequip import NequIPUQCalculator, UncertaintyCalibration

pytestmark = pytest.mark.slow

EIP_CALIBRATE = str(BIN / "eip-calibrate")
TYPES = ["C", "H", "O"]


def _sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _head_state(ckpt_path) -> dict:
    ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    return {
        k.split(".head.")[1]: v
        for k, v in ck["state_dict"].items()
        if any(f".head.{part}." in k for part in ("density", "output_range", "variance_scale"))
    }


def _distances(calc, frames):
    return np.concatenate(
        [calc.get_property(keys.FORCES_FEATURE_DISTANCE, atoms.copy()) for atoms in frames]
    )


@pytest.mark.parametrize("head", ["e2ip", "eip", "mve"])
def test_checkpoints_are_calibrated_when_training_ends(runs, head):
    run_dir = runs.trained(head)
    assert re.search(r"uncertainty calibration: statistics", (run_dir / "stdout.txt").read_text())
    frames = ase.io.read(DATA / "ethanol_train.xyz", ":")
    numbers = np.concatenate([a.numbers for a in frames])
    for name in ("best.ckpt", "last.ckpt"):
        state = _head_state(run_dir / name)
        counts = [float((numbers == ase.data.atomic_numbers[t]).sum()) for t in TYPES]
        assert state["density.count"].tolist() == counts, name
        assert float(state["variance_scale.scale"]) != 1.0
    # the force prior: k^2 = 64 times the mean squared reference force component of each type
    forces = np.concatenate([a.arrays["REF_forces"] for a in frames])
    prior = [64.0 * np.mean(forces[numbers == ase.data.atomic_numbers[t]] ** 2) for t in TYPES]
    np.testing.assert_allclose(state["density.prior_variance"].double(), prior, rtol=1e-5)
    # r has an RMS of 1 over the training atoms of each type (the model is float32); by default
    # every training atom is stored for the neighbour distance, and a stored atom's own
    # neighbour distance is 0: r^2 is then (1 - w) times its Gaussian distance
    state = _head_state(run_dir / "best.ckpt")
    stored = torch.bincount(state["density.bank_species"], minlength=len(TYPES)).tolist()
    assert stored == [int(c) for c in counts]
    expected = np.sqrt(1.0 - float(state["density.neighbour_weight"]))
    calc = NequIPUQCalculator.from_saved_model(run_dir / "best.ckpt")
    r = _distances(calc, frames[:100])
    sub = numbers[: len(r)]
    for t in TYPES:
        rms = np.sqrt(np.mean(r[sub == ase.data.atomic_numbers[t]] ** 2))
        assert rms == pytest.approx(expected, abs=0.1)  # a third of the training set


def _calibrate(cwd, *args, check=True):
    return run_cli([EIP_CALIBRATE, "nequip", *map(str, args)], cwd, check=check)


def test_eip_calibrate_refits_a_checkpoint(runs, tmp_path):
    best = runs.trained("e2ip") / "best.ckpt"
    digest = _sha(best)
    out = tmp_path / "again.ckpt"
    proc = _calibrate(
        tmp_path,
        "--model", best, "--train_file", DATA / "ethanol_train.xyz",
        "--valid_file", DATA / "ethanol_valid.xyz", "--output", out,
    )  # fmt: skip
    assert "variance scale c =" in proc.stdout and _sha(best) == digest
    trained, again = _head_state(best), _head_state(out)
    assert "output_range.upper" in trained and (trained["output_range.upper"] < 1e29).all()
    for key, value in trained.items():  # the same data as nequip-train: the same fit
        if key in {f"density.{name}" for name in BANK_ROWS}:
            continue  # the stored training atoms, in the order read: compared by their distances
        torch.testing.assert_close(again[key], value, rtol=2e-4, atol=1e-5)
    assert again["density.bank"].shape == trained["density.bank"].shape
    frames = ase.io.read(DATA / "ethanol_test_1200K.xyz", ":3")
    np.testing.assert_allclose(
        _distances(NequIPUQCalculator.from_saved_model(out), frames),
        _distances(NequIPUQCalculator.from_saved_model(best), frames),
        rtol=1e-3,
    )
    off = tmp_path / "off.ckpt"
    _calibrate(
        tmp_path,
        "--model", best, "--train_file", DATA / "ethanol_train.xyz", "--output", off,
        "--no_density", "--no_output_range", "--recalibrate", "none", "--force_prior", "0",
    )  # fmt: skip
    assert np.all(_distances(NequIPUQCalculator.from_saved_model(off), frames) == 0.0)
    assert (_head_state(off)["output_range.upper"] == 1e30).all()
    assert (_head_state(off)["density.prior_variance"] == 0).all()


def test_eip_calibrate_bad_input(runs, tmp_path):
    best = runs.trained("e2ip") / "best.ckpt"
    train = DATA / "ethanol_train.xyz"
    si = ase.io.read(train, ":2")
    si[1].numbers[0] = 14
    ase.io.write(tmp_path / "si.xyz", si)
    no_forces = ase.io.read(train, ":2")
    del no_forces[0].arrays["REF_forces"]
    ase.io.write(tmp_path / "no_forces.xyz", no_forces)
    package = tmp_path / "model.nequip.zip"
    package.write_bytes(b"PK")
    cases = [
        (best, tmp_path / "si.xyz", tmp_path / "o.ckpt", "element(s) ['Si']"),
        (best, tmp_path / "no_forces.xyz", tmp_path / "o.ckpt", "structure 0 has no forces"),
        (best, train, best, "--output must differ from --model"),
        (best, train, tmp_path / "o.model", "writes a '.ckpt' checkpoint"),
        (package, train, tmp_path / "o.ckpt", "is a nequip-package file"),
        (tmp_path / "missing.ckpt", train, tmp_path / "o.ckpt", "does not exist"),
    ]
    digest = _sha(best)
    for model, data, out, expected in cases:
        proc = _calibrate(
            tmp_path, "--model", model, "--train_file", data, "--output", out, check=False
        )
        assert proc.returncode == 2, proc.stdout[-2000:]
        assert "Traceback" not in proc.stdout
        last = proc.stdout.strip().splitlines()[-1]
        assert last.startswith("eip-calibrate: error: ") and expected in last, last
    assert _sha(best) == digest and not (tmp_path / "o.ckpt").exists()


def test_checkpoint_of_an_older_version_loads_uncalibrated(runs, tmp_path):
    """A checkpoint written before the density existed (no density / variance-scale entries)
    loads, and evaluates as the head without statistics and c = 1."""
    best = runs.trained("mve") / "best.ckpt"
    ck = torch.load(best, map_location="cpu", weights_only=False)
    ck["state_dict"] = {
        k: v
        for k, v in ck["state_dict"].items()
        if ".head.density." not in k and ".head.variance_scale." not in k
    }
    old = tmp_path / "old.ckpt"
    torch.save(ck, old)
    frames = ase.io.read(DATA / "ethanol_test_300K.xyz", ":2")
    pred = collect_predictions(NequIPUQCalculator.from_saved_model(old), frames)
    calibrated = collect_predictions(NequIPUQCalculator.from_saved_model(best), frames)
    np.testing.assert_array_equal(pred["forces"], calibrated["forces"])
    scale = float(_head_state(best)["variance_scale.scale"])
    np.testing.assert_allclose(pred["mve_cov"] * scale, calibrated["mve_cov"], rtol=1e-5)


def test_callback_arguments_are_validated():
    with pytest.raises(ValueError, match="UncertaintyCalibration: invalid recalibrate='mae'"):
        UncertaintyCalibration(recalibrate="mae")
    with pytest.raises(ValueError, match="power"):
        UncertaintyCalibration(power=0.5)
    for value in (1, "64", 2.5):
        with pytest.raises(ValueError, match="UncertaintyCalibration: invalid .*neighbours"):
            UncertaintyCalibration(neighbours=value)
    for key in ("density", "output_range"):  # a string in the config is not read as a bool
        with pytest.raises(ValueError, match=f"invalid {key}='false': must be true or false"):
            UncertaintyCalibration(**{key: "false"})
    # stored training atoms by default, none without the feature statistics they are measured in
    assert UncertaintyCalibration().settings.neighbours == DEFAULT_NEIGHBOURS == 4096
    assert UncertaintyCalibration(density=False).settings.neighbours == 0
    assert UncertaintyCalibration(neighbours=0).settings.neighbours == 0
    with pytest.raises(ValueError, match="neighbours need the feature statistics"):
        UncertaintyCalibration(density=False, neighbours=64)
    assert UncertaintyCalibration().settings.force_prior == 8.0
    assert UncertaintyCalibration(force_prior=0).settings.force_prior == 0.0
    for value in (True, "4"):  # a YAML true or a quoted number is not taken for a multiple
        with pytest.raises(ValueError, match="UncertaintyCalibration: invalid force_prior"):
            UncertaintyCalibration(force_prior=value)
    with pytest.raises(ValueError, match="UncertaintyCalibration: invalid force prior=-1.0"):
        UncertaintyCalibration(force_prior=-1.0)


def test_eip_calibrate_with_neighbours_stores_a_bank_the_checkpoint_loads(runs, tmp_path):
    best = runs.trained("e2ip") / "best.ckpt"
    common = ["--model", best, "--train_file", DATA / "ethanol_train.xyz"]
    plain, near = tmp_path / "gaussian.ckpt", tmp_path / "neighbours.ckpt"
    _calibrate(tmp_path, *common, "--output", plain, "--density_neighbours", "0")
    _calibrate(tmp_path, *common, "--output", near, "--density_neighbours", "64")
    state = _head_state(near)
    counts = torch.bincount(state["density.bank_species"], minlength=len(TYPES))
    assert state["density.bank"].shape[0] == int(counts.sum()) and (counts == 64).all()
    assert float(state["density.neighbour_weight"]) == 0.5
    assert "density.bank" in _head_state(plain) and _head_state(plain)["density.bank"].numel() == 0
    # by default every training atom is stored (fewer than 4096 per type here)
    default = tmp_path / "default.ckpt"
    _calibrate(tmp_path, *common, "--output", default)
    stored = torch.bincount(_head_state(default)["density.bank_species"], minlength=len(TYPES))
    numbers = np.concatenate([a.numbers for a in ase.io.read(DATA / "ethanol_train.xyz", ":")])
    assert stored.tolist() == [int((numbers == ase.data.atomic_numbers[t]).sum()) for t in TYPES]
    frames = ase.io.read(DATA / "ethanol_test_1200K.xyz", ":3")
    # the checkpoint builds a model without a bank and loads B = 3 x 64 stored atoms into it
    calc, calc_eager = (
        NequIPUQCalculator.from_saved_model(near, torchscript_head=ts) for ts in (True, False)
    )
    r_near, r_eager = _distances(calc, frames), _distances(calc_eager, frames)
    np.testing.assert_allclose(r_near, r_eager, rtol=1e-5)
    r_plain = _distances(NequIPUQCalculator.from_saved_model(plain), frames)
    assert np.isfinite(r_near).all() and not np.allclose(r_near, r_plain)
    proc = _calibrate(tmp_path, *common, "--output", tmp_path / "x.ckpt",
                      "--density_neighbours", "1", check=False)  # fmt: skip
    last = proc.stdout.strip().splitlines()[-1]
    assert proc.returncode == 2 and "neighbours=1" in last, last
