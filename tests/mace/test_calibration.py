"""Feature statistics and recalibration of MACE models: fitted at the end of
``mace_run_train --head`` (before the ``.model`` and ``_compiled.model`` are written), refitted by
``eip-calibrate mace``, and carried by every save path (pickle, TorchScript, eval_configs)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from mace_helpers import BIN, feature_distances, run_cli

from eip_plugins.core import keys
from eip_plugins.core.feature_density import BANK_ROWS
from eip_plugins.evaluation import collect_predictions
from eip_plugins.mace import MACEUQCalculator

pytestmark = pytest.mark.slow

EIP_CALIBRATE = str(BIN / "eip-calibrate")
DISTANCE_FIELDS = (keys.FORCES_FEATURE_DISTANCE, *keys.PER_STRUCTURE_DISTANCE_KEYS)


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def _sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.mark.parametrize("head", ["e2ip", "eip", "mve"])
def test_trained_models_are_calibrated_on_their_training_set(request, data, head):
    run = request.getfixturevalue(f"{head}_run")
    model = _load(run["model"])
    train_frames = ase.io.read(data["train"], ":")
    numbers = np.concatenate([a.numbers for a in train_frames])
    counts = model.head.density.count.tolist()
    z_table = [int(z) for z in model.atomic_numbers]
    assert counts == [float((numbers == z).sum()) for z in z_table]
    assert float(model.head.variance_scale.scale) != 1.0
    assert re.search(r"uncertainty calibration: statistics .* c = ", run["log"])
    # every training atom is stored for the neighbour distance by default (fewer than 4096 per
    # element); eip was trained with --eip_density_neighbours=0
    density = model.head.density
    assert density.has_neighbours == (head != "eip")
    if density.has_neighbours:
        stored = torch.bincount(density.bank_species, minlength=len(z_table)).tolist()
        assert stored == [int(c) for c in counts]
    # r is normalised to an RMS of 1 over the training atoms of each element (the statistics
    # come from the float32 training model, this evaluation is float64); a stored atom's own
    # neighbour distance is 0, so with the bank r^2 is (1 - w) times its Gaussian distance
    expected = np.sqrt(1.0 - float(density.neighbour_weight)) if density.has_neighbours else 1.0
    r = feature_distances(run["model"], train_frames)
    for z in z_table:
        assert np.sqrt(np.mean(r[numbers == z] ** 2)) == pytest.approx(expected, abs=2e-3)
    assert float(model.head.density.power) == (1.0 if head == "eip" else 2.0)
    # the force prior: k^2 = 64 times the mean squared reference force component of each
    # element's training atoms (mace_run_train's float64 data, the model's float64 buffer)
    forces = np.concatenate([a.arrays["REF_forces"] for a in train_frames])
    prior = [64.0 * np.mean(forces[numbers == z] ** 2) for z in z_table]
    np.testing.assert_allclose(density.prior_variance.double().numpy(), prior, rtol=1e-6)


def test_distance_grows_out_of_distribution(e2ip_run, data):
    cold = feature_distances(e2ip_run["model"], ase.io.read(data["test_300K"], ":20"))
    hot = feature_distances(e2ip_run["model"], ase.io.read(data["test_1200K"], ":20"))
    assert hot.mean() > 1.2 * cold.mean()


def test_eval_configs_and_compiled_model_carry_the_distance(e2ip_run, mve_run, data):
    frames = e2ip_run["test_300K"]
    reference = feature_distances(e2ip_run["model"], ase.io.read(data["test_300K"], ":"))
    written = np.concatenate([a.arrays["MACE_forces_feature_distance"] for a in frames])
    np.testing.assert_allclose(written, reference, rtol=1e-3, atol=1e-4)  # float32 evaluation
    for atoms in frames:
        r = atoms.arrays["MACE_forces_feature_distance"]
        assert atoms.info["MACE_feature_distance_max"] == pytest.approx(r.max(), rel=1e-6)
    # stage two (SWA) models are calibrated too; the compiled twin gives the same distances
    compiled = MACEUQCalculator(model_paths=str(mve_run["compiled"]), default_dtype="float64")
    eager = MACEUQCalculator(model_paths=str(mve_run["model"]), default_dtype="float64")
    atoms = ase.io.read(data["test_1200K"], index=0)
    for key in (*DISTANCE_FIELDS, keys.FORCES_UNCERTAINTY):
        np.testing.assert_allclose(
            compiled.get_property(key, atoms.copy()),
            eager.get_property(key, atoms.copy()),
            rtol=1e-6,
        )
    assert _load(mve_run["model"]).head.density.fitted


def _calibrate(cwd, *args, check=True):
    return run_cli([EIP_CALIBRATE, "mace", *map(str, args)], cwd, check=check)


def test_eip_calibrate_reproduces_the_end_of_training_fit(e2ip_run, data, tmp_path):
    """The same data through eip-calibrate gives the statistics mace_run_train fitted (the
    training run used its float32 loaders in shuffled order: equal to float32 rounding)."""
    out = tmp_path / "again.model"
    digest = _sha(e2ip_run["model"])
    proc = _calibrate(
        tmp_path,
        "--model", e2ip_run["model"], "--train_file", data["train"],
        "--valid_file", data["valid"], "--output", out,
    )  # fmt: skip
    assert "variance scale c =" in proc.stdout and "validation: CE" in proc.stdout
    assert _sha(e2ip_run["model"]) == digest
    trained, again = _load(e2ip_run["model"]).head, _load(out).head
    assert trained.output_range.fitted  # by mace_run_train, after training
    for module in ("density", "output_range"):
        for name, buf in getattr(trained, module).named_buffers():
            if name in BANK_ROWS:  # in the order read: compared by their distances below
                continue
            again_buf = getattr(getattr(again, module), name)
            torch.testing.assert_close(again_buf, buf, rtol=2e-4, atol=1e-5, msg=name)
    torch.testing.assert_close(
        again.variance_scale.scale, trained.variance_scale.scale, rtol=1e-3, atol=0
    )
    # the same stored atoms (all of them) give the same distances
    assert trained.density.bank.shape == again.density.bank.shape
    frames = ase.io.read(data["test_1200K"], ":3")
    np.testing.assert_allclose(
        feature_distances(out, frames), feature_distances(e2ip_run["model"], frames), rtol=1e-3
    )
    # switched off: no distance, no range, c = 1, the head exactly as trained
    off = tmp_path / "off.model"
    _calibrate(
        tmp_path,
        "--model", e2ip_run["model"], "--train_file", data["train"], "--valid_file",
        data["valid"], "--output", off, "--no_density", "--no_output_range", "--recalibrate",
        "none", "--force_prior", "0",
    )  # fmt: skip
    assert np.all(feature_distances(off, frames) == 0.0)
    head = _load(off).head
    assert not head.density.fitted and float(head.variance_scale.scale) == 1.0
    assert not head.output_range.fitted and not head.density.has_force_prior


def test_eip_calibrate_bad_input(e2ip_run, plain_runs, data, tmp_path):
    plain = plain_runs["default"]["workdir"] / "plain.model"
    si = ase.io.read(data["valid"], ":2")
    si[1].numbers[0] = 14
    ase.io.write(tmp_path / "si.xyz", si)
    no_forces = ase.io.read(data["valid"], ":2")
    del no_forces[0].arrays["REF_forces"]
    ase.io.write(tmp_path / "no_forces.xyz", no_forces)
    model = e2ip_run["model"]
    cases = [
        ([plain, data["train"], "plain MACE model without an evidential head"], None),
        ([model, tmp_path / "si.xyz", "element(s) ['Si']"], None),
        ([model, tmp_path / "no_forces.xyz", "structure 0 has no forces"], None),
        ([model, data["train"], "--output must differ from --model"], model),
    ]
    for (path, train_file, expected), output in cases:
        out = output or tmp_path / "out.model"
        before = {p: _sha(p) for p in (path, train_file)}
        proc = _calibrate(
            tmp_path, "--model", path, "--train_file", train_file, "--output", out, check=False
        )
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert lines[-1].startswith("eip-calibrate: error: ") and expected in lines[-1]
        assert "Traceback" not in proc.stderr
        assert {p: _sha(p) for p in before} == before
        if output is None:
            assert not out.exists()
    assert not list(tmp_path.glob(".out.model.*"))  # no temporary left behind


def test_model_pickled_before_the_density_existed_still_loads(e2ip_run, data, tmp_path):
    """A *.model of an older eip-plugins (its head has no density / variance scale) loads and
    evaluates exactly as the uncalibrated head."""
    model = _load(e2ip_run["model"])
    model.head.density.reset()
    model.head.variance_scale.set(1.0)
    ref_path = tmp_path / "uncalibrated.model"
    torch.save(model, ref_path)
    del model.head._modules["density"], model.head._modules["variance_scale"]
    old_path = tmp_path / "old.model"
    torch.save(model, old_path)
    frames = ase.io.read(data["test_300K"], ":3")
    old = collect_predictions(MACEUQCalculator(model_paths=str(old_path)), frames)
    ref = collect_predictions(MACEUQCalculator(model_paths=str(ref_path)), frames)
    for key in ("forces", "sigma", keys.E2IP_KAPPA, keys.E2IP_PSI):
        np.testing.assert_array_equal(old[key], ref[key])


def test_eip_calibrate_with_neighbours(e2ip_run, data, tmp_path):
    out = tmp_path / "neighbours.model"
    _calibrate(
        tmp_path,
        "--model", e2ip_run["model"], "--train_file", data["train"],
        "--valid_file", data["valid"], "--output", out, "--density_neighbours", "50",
    )  # fmt: skip
    density = _load(out).head.density
    assert density.has_neighbours and float(density.neighbour_weight) == 0.5
    assert torch.bincount(density.bank_species).tolist() == [50] * len(density.bank_temperature)
    frames = ase.io.read(data["test_1200K"], ":3")
    r_near = feature_distances(out, frames)  # TorchScript head
    eager = MACEUQCalculator(model_paths=str(out), default_dtype="float64", torchscript_head=False)
    r_eager = np.concatenate(
        [eager.get_property(keys.FORCES_FEATURE_DISTANCE, a.copy()) for a in frames]
    )
    np.testing.assert_allclose(r_near, r_eager, rtol=1e-10)
    assert not np.allclose(r_near, feature_distances(e2ip_run["model"], frames))
    # the whole model compiled as mace_run_train writes its `_compiled.model` (e3nn's jit)
    from e3nn.util import jit

    compiled = tmp_path / "neighbours_compiled.model"
    torch.jit.save(jit.compile(_load(out)), str(compiled))
    np.testing.assert_allclose(feature_distances(compiled, frames), r_eager, rtol=1e-10)


def test_calibration_flags_store_training_atoms_by_default():
    """``--eip_density_neighbours``: 4096 stored training atoms per element by default, none
    without the feature statistics or with 0; asking for them without the statistics names the
    flag."""
    from argparse import Namespace

    from eip_plugins.mace.arguments import HeadArgumentError, calibration_settings_from_args

    assert calibration_settings_from_args(Namespace()).neighbours == 4096
    off = Namespace(eip_density_statistics=False)
    assert calibration_settings_from_args(off).neighbours == 0
    assert calibration_settings_from_args(Namespace(eip_density_neighbours=0)).neighbours == 0
    both = Namespace(eip_density_statistics=False, eip_density_neighbours=64)
    with pytest.raises(HeadArgumentError, match="--eip_density_neighbours: .*feature statistics"):
        calibration_settings_from_args(both)
    # the force prior: k = 8 by default, off with 0, a negative k names the flag
    assert calibration_settings_from_args(Namespace()).force_prior == 8.0
    assert calibration_settings_from_args(Namespace(eip_force_prior=0.0)).force_prior == 0.0
    with pytest.raises(HeadArgumentError, match="--eip_force_prior: invalid force prior=-1.0"):
        calibration_settings_from_args(Namespace(eip_force_prior=-1.0))
