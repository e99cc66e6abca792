"""Allegro (nequip-allegro) with a head: trained with ``config_with_eip backbone=allegro``,
compiled with ``nequip-compile --target ase_uq``, and attached to a plain Allegro checkpoint."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
import torch
from nequip_helpers import (
    BIN,
    DATA,
    REPO,
    calculator_results,
    compile_args,
    run_cli,
    run_parallel,
    train_args,
)

from eip_plugins.core import keys
from eip_plugins.nequip import NequIPUQCalculator
from eip_plugins.nequip.attach import _predict, load_original
from eip_plugins.nequip.calibration import head_of

EIP_ATTACH = str(BIN / "eip-attach")
SMALL_ALLEGRO = [
    "backbone=allegro",
    "++training_module.model.num_layers=1",
    "++training_module.model.num_scalar_features=16",
    "++training_module.model.allegro_mlp_hidden_layers_width=16",
]


@pytest.fixture(scope="module")
def allegro_runs(tmp_path_factory) -> dict:
    """Concurrently: Allegro + e2ip through config_with_eip (2 epochs) and a plain Allegro model
    (2 epochs); then the e2ip model is compiled for ASE."""
    root = tmp_path_factory.mktemp("allegro")
    trained, plain = root / "e2ip", root / "plain"
    plain_cmd = [
        BIN / "nequip-train",
        "-cp",
        REPO / "examples" / "benchmark" / "nequip_configs",
        "-cn",
        "plain_allegro",  # the benchmark's plain Allegro
        f"++train_file={DATA / 'ethanol_train.xyz'}",
        f"++val_file={DATA / 'ethanol_valid.xyz'}",
        f"++test_file={DATA / 'ethanol_test_300K.xyz'}",
        "++run=[train]",
        "++max_epochs=2",
        "++training_module.model.num_layers=1",
        "++training_module.model.num_scalar_features=16",
        f"hydra.run.dir={plain}",
    ]
    nequip_only = "++training_module.model."  # the suite's small NequIP model settings
    e2ip_cmd = [a for a in train_args(trained, "e2ip", 2) if not str(a).startswith(nequip_only)]
    e2ip_cmd += SMALL_ALLEGRO
    run_parallel([(e2ip_cmd, root / "e2ip_log"), (plain_cmd, root / "plain_log")])
    compiled = root / "e2ip.nequip.pt2"
    run_cli(compile_args(trained / "best.ckpt", compiled), cwd=root)
    return {"trained": trained / "best.ckpt", "plain": plain / "best.ckpt", "compiled": compiled}


def test_trained_allegro_head_and_its_compiled_model(allegro_runs):
    head = head_of(load_original(allegro_runs["trained"]))
    assert head.geometry is not None and head.head_irreps.endswith("16x1o+16x2e")
    assert float(head.variance_scale.scale) != 1.0  # calibrated when training ended
    atoms = ase.io.read(DATA / "ethanol_test_300K.xyz", 3)
    eager = calculator_results(NequIPUQCalculator.from_saved_model(allegro_runs["trained"]), atoms)
    compiled = calculator_results(
        NequIPUQCalculator.from_compiled_model(allegro_runs["compiled"], device="cpu"), atoms
    )
    for key in ("energy", "forces", keys.FORCES_UNCERTAINTY, keys.FORCES_EPISTEMIC_COV):
        np.testing.assert_allclose(compiled[key], eager[key], rtol=1e-4, atol=1e-6)
    assert np.all(np.linalg.eigvalsh(eager[keys.FORCES_ALEATORIC_COV]) > 0)


def test_attach_to_a_plain_allegro_model(allegro_runs, tmp_path):
    out = tmp_path / "allegro_e2ip.ckpt"
    cmd = [EIP_ATTACH, "nequip", "--model", allegro_runs["plain"], "--output", out]
    cmd += ["--train_file", DATA / "ethanol_train.xyz", "--max_epochs", "3"]
    proc = run_cli(cmd, cwd=tmp_path)
    assert "per-atom sums of the edge latents of 'allegro'" in proc.stdout
    assert "16x1o + 16x2e built from the neighbour list" in proc.stdout
    frames = ase.io.read(DATA / "ethanol_test_1200K.xyz", ":6")
    before = _predict(load_original(allegro_runs["plain"]), frames, "REF_forces")
    after = _predict(load_original(out), frames, "REF_forces")
    assert torch.equal(before["forces"], after["forces"])
    assert torch.equal(before["energy"], after["energy"])
    # the attached model's config names Allegro's builder as its backbone
    ck = torch.load(out, map_location="cpu", weights_only=False)
    model_config = ck["hyper_parameters"]["model"]
    assert model_config["backbone"]["_target_"] == "allegro.model.AllegroModel"
    assert "feature_layer" not in model_config


def test_feature_layer_is_refused_for_allegro(allegro_runs, tmp_path):
    cmd = [EIP_ATTACH, "nequip", "--model", allegro_runs["plain"], "--output", tmp_path / "o.ckpt"]
    cmd += ["--train_file", DATA / "ethanol_train.xyz", "--feature_layer", "0"]
    proc = run_cli(cmd, cwd=tmp_path, check=False)
    assert proc.returncode == 2
    last = proc.stdout.strip().splitlines()[-1]
    assert "feature_layer=0" in last and "Allegro" in last
    assert not (tmp_path / "o.ckpt").exists()


def test_packaged_allegro_head_gives_the_checkpoints_results(allegro_runs, tmp_path):
    """nequip-package of the trained Allegro + e2ip checkpoint: the package loads through the
    calculator and gives the checkpoint's energies, forces and uncertainties to the bit."""
    package = tmp_path / "allegro_e2ip.nequip.zip"
    run_cli([BIN / "nequip-package", "build", allegro_runs["trained"], package], cwd=tmp_path)
    atoms = ase.io.read(DATA / "ethanol_test_300K.xyz", 3)
    eager = calculator_results(NequIPUQCalculator.from_saved_model(allegro_runs["trained"]), atoms)
    packaged = calculator_results(NequIPUQCalculator.from_saved_model(str(package)), atoms)
    for key in ("energy", "forces", keys.FORCES_UNCERTAINTY, keys.FORCES_EPISTEMIC_COV):
        np.testing.assert_array_equal(packaged[key], eager[key])
