"""Bad input fails early with a message that names the problem."""

from __future__ import annotations

import pytest
from ase.build import molecule
from nequip.data import AtomicDataDict
from nequip.integrations.utils import basic_transforms
from nequip_helpers import BIN, TYPES, build_model, run_cli, to_data, train_args

from eip_plugins.nequip import EvidentialLoss, EvidentialNequIPGNNModel, NequIPUQCalculator


def test_data_without_forces(ethanol_300K):
    model = build_model("e2ip")
    model.train()
    batch = to_data(ethanol_300K[:2])
    out = model(batch.copy())
    batch.pop(AtomicDataDict.FORCE_KEY)  # e.g. a file whose forces were not mapped
    with pytest.raises(ValueError, match="reference forces.*'forces'"):
        EvidentialLoss(head="e2ip")(out, batch)


def _calculator(model):
    model.eval()
    transforms = basic_transforms({}, 4.0, TYPES, {t: t for t in TYPES})
    return NequIPUQCalculator(
        model, transforms=transforms, chemical_species_to_atom_type_map={t: t for t in TYPES}
    )


def test_unknown_chemical_species():
    calc = _calculator(build_model("e2ip", dtype="float32"))
    atoms = molecule("CH3CN")  # N is not a model type
    atoms.calc = calc
    with pytest.raises(ValueError, match=r"\['N'\] are not known"):
        atoms.get_forces()
    ok = molecule("CH3CH2OH")
    ok.calc = calc
    assert ok.get_forces().shape == (9, 3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"head": "gauss"}, "head kind must be one of"),
        ({"head": "eip", "head_options": {"quantile": 1.5}}, "quantile=1.5"),
        ({"head_options": {"nu_w_floor": 3.0}}, "nu_w_floor=3.0"),
        ({"head_options": {"hidden": 0}}, "hidden=0"),
        ({"head_options": {"lam": -1.0}}, "lam=-1.0"),
        ({"head_options": {"quantil": 0.3}}, r"unknown head option\(s\) \['quantil'\]"),
        ({"forces_rms": 0.0}, "forces_rms=0.0"),
        ({"feature_layer": 5}, r"feature_layer=5 is out of range for 2 convnet layers"),
        ({"feature_layer": "last"}, r"invalid feature_layer='last': a convnet layer index, 'all'"),
        (
            {"l_max": 0, "head_options": {"geometric_features": "never"}},
            r"geometric_features='never' needs vector \(1o\) node features",
        ),
    ],
)
def test_out_of_range_hyperparameters(kwargs, match):
    args = dict(
        seed=1,
        model_dtype="float32",
        type_names=TYPES,
        r_max=4.0,
        num_layers=2,
        num_features=4,
        avg_num_neighbors=5.0,
    )
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        EvidentialNequIPGNNModel(**args)


def test_eip_attach_refuses_a_feature_layer_that_is_neither_an_index_nor_all(capsys):
    from eip_plugins.attach.cli import main

    argv = ["nequip", "--model", "m.ckpt", "--train_file", "t.xyz", "--output", "o.ckpt"]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--feature_layer", "last"])
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--feature_layer: invalid value 'last': a convnet layer index (e.g. -2) or 'all'" in last


def test_out_of_range_loss_hyperparameters():
    with pytest.raises(ValueError, match="energy_weight=-1.0"):
        EvidentialLoss(energy_weight=-1.0)
    with pytest.raises(ValueError, match="quantile=0.0"):
        EvidentialLoss(head="eip", head_options={"quantile": 0.0})


def test_loss_head_must_match_model(ethanol_300K):
    model = build_model("mve")
    batch = to_data(ethanol_300K[:2])
    out = model(batch.copy())
    with pytest.raises(ValueError, match="configured for head 'e2ip' but the model has a 'mve'"):
        EvidentialLoss(head="e2ip")(out, batch)


@pytest.mark.slow
def test_cli_rejects_out_of_range_hyperparameter(tmp_path):
    proc = run_cli(
        train_args(tmp_path / "run", "e2ip", 1, "++head_options.nu_w_floor=2.0"),
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode != 0
    assert "invalid nu_w_floor=2.0" in proc.stdout


def test_plain_nequip_model_is_rejected():
    from nequip.model import NequIPGNNModel

    plain = NequIPGNNModel(
        seed=1,
        model_dtype="float32",
        type_names=TYPES,
        r_max=4.0,
        num_layers=2,
        num_features=4,
        avg_num_neighbors=5.0,
    )
    with pytest.raises(ValueError, match="plain NequIP model.*EvidentialNequIPGNNModel"):
        _calculator(plain)
    out = plain(_ethanol_data())
    with pytest.raises(ValueError, match="no evidential head parameters"):
        EvidentialLoss()(out, _ethanol_data())


def test_compiled_constructor_rejects_other_files(tmp_path):
    path = tmp_path / "model.ckpt"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="--target ase_uq"):
        NequIPUQCalculator.from_compiled_model(path)


def _ethanol_data():
    atoms = molecule("CH3CH2OH")
    atoms.info["REF_energy"] = -300.0
    atoms.arrays["REF_forces"] = atoms.positions * 0.0
    return to_data([atoms])


def test_the_other_adapter_names_its_extra_in_this_environment(tmp_path):
    """MACE is not installed next to NequIP: its adapter says what to install, and
    eip-attach mace / eip-calibrate mace stop with one line."""
    import os
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", "from eip_plugins.mace import MACEUQCalculator"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: eip_plugins.mace needs MACE") and (
        'pip install "eip-plugins[mace]"' in last
    )
    for tool in ("eip-attach", "eip-calibrate"):
        proc = subprocess.run(
            [str(BIN / tool), "mace", "--model", "m.model", "--train_file", "t.xyz",
             "--valid_file", "v.xyz", "--output", "o.model"],
            cwd=tmp_path, capture_output=True, text=True,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},  # torch/e3nn warnings are not ours
        )  # fmt: skip
        assert proc.returncode == 2, (tool, proc.stderr)
        assert proc.stderr.strip().splitlines() == [
            f"{tool}: error: {last.removeprefix('ImportError: ')}"
        ], tool


def test_config_with_eip_is_found_from_any_folder_and_needs_the_data_files(tmp_path):
    """``-cn config_with_eip`` without ``-cp``: the config shipped in the package is on Hydra's
    search path (the training itself runs in test_cli_end_to_end); its data files are required."""
    proc = run_cli([BIN / "nequip-train", "-cn", "config_with_eip", "--cfg", "job"], tmp_path)
    assert "EvidentialNequIPGNNModel" in proc.stdout and "train_file: ???" in proc.stdout
    proc = run_cli(
        [BIN / "nequip-train", "-cn", "config_with_eip", "++max_epochs=1"], tmp_path, check=False
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stdout
    # one line from the config's Hydra callback (OneLineErrors), before NequIP reads anything
    last = proc.stdout.strip().splitlines()[-1]
    assert last == (
        "nequip-train: error: train_file is not set: add ++train_file=FILE "
        "(any ASE-readable file, e.g. extxyz)"
    ), proc.stdout[-2000:]


@pytest.mark.parametrize("content", [b"garbage\n", b"", b"PK\x03\x04truncated"])
def test_a_corrupt_model_file_gives_one_line_naming_it(content, tmp_path):
    for name, load in (
        ("bad.ckpt", NequIPUQCalculator.from_saved_model),
        ("bad.nequip.zip", NequIPUQCalculator.from_saved_model),
        ("bad.nequip.pt2", NequIPUQCalculator.from_compiled_model),
    ):
        bad = tmp_path / name
        bad.write_bytes(content)
        with pytest.raises(ValueError, match=rf"{name.replace('.', '[.]')} is not a NequIP .*"
                           "(not a torch/zip archive|the file is empty)"):  # fmt: skip
            load(str(bad))
        assert bad.read_bytes() == content
        with pytest.raises(FileNotFoundError, match=r"model file .*missing\.ckpt does not exist"):
            load(str(tmp_path / "missing.ckpt"))


def test_one_line_errors_unwraps_input_errors_and_leaves_others():
    """The Hydra callback's one line: the root input error, with the config key Hydra names;
    None (Hydra's own report) for errors that are not about the input."""
    from hydra.errors import InstantiationException

    from eip_plugins.nequip.hydra_errors import one_line

    try:
        try:
            raise ValueError("invalid lam=-1.0: must be >= 0\nsecond line")
        except ValueError as err:
            raise InstantiationException(
                "Error in call to target 'eip_plugins.nequip.EvidentialLoss':\n"
                "ValueError('...')\nfull_key: training_module.loss"
            ) from err
    except InstantiationException as wrapped:
        line = one_line(wrapped)
    assert line == (
        "training_module.loss (eip_plugins.nequip.EvidentialLoss): invalid lam=-1.0: must be >= 0"
    )
    missing = FileNotFoundError(2, "No such file or directory", "train.xyz")
    assert one_line(missing) == "train.xyz does not exist"
    assert one_line(RuntimeError("CUDA out of memory")) is None
