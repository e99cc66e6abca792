"""Bad-input sweep, NequIP environment: every case of ``tests/bad_inputs.py`` for NequIP's entry
points ends in one line naming the problem, and leaves every file of its folder as it was."""

from __future__ import annotations

import shutil

import pytest
from bad_inputs import (
    DATA_FILES,
    InProcessCLI,
    bad_structures,
    cases_for,
    check_case,
    check_finite_results,
    eip_al_argv,
    make_workspace,
    truncate_copy,
    unusual_valid_structures,
)
from nequip_helpers import DATA, NEQUIP_COMPILE, NEQUIP_PACKAGE, NEQUIP_TRAIN, REPO, cli_env

CASES = cases_for("nequip")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, runs) -> dict:
    folder = make_workspace(
        tmp_path_factory.mktemp("bad_nequip"), DATA / "ethanol_train.xyz", ".ckpt"
    )
    shutil.copy(runs.trained("e2ip") / "best.ckpt", folder / "head.ckpt")
    shutil.copy(runs.compiled("e2ip"), folder / "model.nequip.pt2")
    truncate_copy(folder / "head.ckpt", folder / "truncated.ckpt")
    _with_moved_data(folder / "head.ckpt", folder / "moved_data.ckpt", folder / "gone")
    shutil.copy(REPO / "examples" / "models" / "ethanol_e2ip.model", folder / "mace.model")
    (folder / "empty.nequip.pt2").write_bytes(b"")
    (folder / "garbage.nequip.pt2").write_text("garbage\n")
    (folder / "existing_output.ckpt").write_text("a checkpoint of the user's: must survive")
    return {"folder": folder, "structures": bad_structures()}


def _with_moved_data(ckpt, out, gone) -> None:
    """A copy of checkpoint ``ckpt`` whose training data paths point into the missing ``gone``."""
    import torch

    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    data = saved["hyper_parameters"]["info_dict"]["data"]
    for key in ("train_file_path", "val_file_path", "test_file_path"):
        if key in data:
            data[key] = str(gone / "train.xyz")
    torch.save(saved, out)


MODEL_FILES = {
    "missing-model": "missing.ckpt",
    "empty-model": "empty.ckpt",
    "corrupt-model": "garbage.ckpt",
    "truncated-model": "truncated.ckpt",
    "foreign-model": "mace.model",  # the shipped MACE model: another framework's file
    "head-model": "head.ckpt",
    "compiled-model": "model.nequip.pt2",
    "moved-training-data": "moved_data.ckpt",
}


def _calculator(compiled: bool):
    def make(case, ws):
        from eip_plugins.nequip import NequIPUQCalculator

        folder = ws["folder"]
        if compiled:
            load, good = NequIPUQCalculator.from_compiled_model, "model.nequip.pt2"
            files = {k: v.replace(".ckpt", ".nequip.pt2") for k, v in MODEL_FILES.items()}
        else:
            load, good, files = NequIPUQCalculator.from_saved_model, "head.ckpt", MODEL_FILES
        if case.bad_input in files:
            return lambda: load(str(folder / files[case.bad_input]))
        if case.bad_input == "out-of-range":
            return lambda: load(str(folder / good), udd={"Q": 1.0})
        if case.bad_input == "unknown-option":  # a misspelt torchscript_head
            return lambda: load(str(folder / good), torchscript_heads=False)
        atoms = ws["structures"][case.bad_input]

        def evaluate():
            atoms.calc = load(str(folder / good))
            atoms.get_forces()

        return evaluate

    return make


def _mains() -> dict:
    from eip_plugins.active_learning.cli import main as eip_al
    from eip_plugins.attach.cli import main as eip_attach
    from eip_plugins.calibration.cli import main as eip_calibrate

    return {"eip-attach": eip_attach, "eip-calibrate": eip_calibrate, "eip-al": eip_al}


MAINS = _mains()


def _head_tool(tool):
    def command(case, ws):
        model = MODEL_FILES.get(case.bad_input, "head.ckpt")
        output = "existing_output.ckpt"
        if case.bad_input == "output-is-input":
            model = output = "head.ckpt"
        if case.bad_input == "unwritable-output":
            output = "good.xyz/out.ckpt"
        if case.bad_input == "read-only-output":
            output = "/sys/out.ckpt"  # read-only for root too (the tests run as root)
        argv = ["nequip", "--model", model, "--output", output,
               "--train_file", DATA_FILES.get(case.bad_input, "good.xyz"),
               "--valid_file", "valid.xyz"]  # fmt: skip
        if tool == "eip-attach":
            argv += ["--max_epochs", "1"]
            if case.bad_input not in ("head-model",):
                argv += ["--replace"]  # head.ckpt is the backbone; its head is replaced
        if case.bad_input == "out-of-range":
            argv += ["--head", "eip", "--eip_quantile", "1.5"] if tool == "eip-attach" else [
                "--density_strength", "-1"]  # fmt: skip
        return InProcessCLI(MAINS[tool], tuple(argv))

    return command


def _nequip_train(case, ws):
    """nequip-train with the shipped config (a subprocess: Hydra owns the process)."""
    extra = ["++head_options.lam=-1"] if case.bad_input == "out-of-range" else []
    return [
        NEQUIP_TRAIN, "-cn", "config_with_eip",
        f"++train_file={DATA_FILES.get(case.bad_input, 'good.xyz')}",
        "++val_file=valid.xyz", "++test_file=valid.xyz", "++max_epochs=1",
        f"hydra.run.dir=outputs/{case.bad_input}", *extra,  # Hydra rewrites its .hydra/ files
    ]  # fmt: skip


def _nequip_compile(case, ws):
    """nequip-compile --target ase_uq (a subprocess: the console script, wrapped on import)"""
    return [
        NEQUIP_COMPILE, MODEL_FILES[case.bad_input], "out.nequip.pt2", "--mode", "aotinductor",
        "--device", "cpu", "--target", "ase_uq",
    ]  # fmt: skip


def _nequip_package(case, ws):
    """nequip-package build (a subprocess: the console script, wrapped on import)"""
    return [NEQUIP_PACKAGE, "build", MODEL_FILES[case.bad_input], "out.nequip.zip"]


def _eip_al(case, ws):
    from eip_plugins.active_learning.cli import main

    model = MODEL_FILES.get(case.bad_input, "head.ckpt")
    return InProcessCLI(main, eip_al_argv(case, "nequip", model))


RUNNERS = {
    "eip-al nequip": _eip_al,
    "NequIPUQCalculator.from_saved_model": _calculator(compiled=False),
    "NequIPUQCalculator.from_compiled_model": _calculator(compiled=True),
    "eip-attach nequip": _head_tool("eip-attach"),
    "eip-calibrate nequip": _head_tool("eip-calibrate"),
    "nequip-train": _nequip_train,
    "nequip-compile": _nequip_compile,
    "nequip-package build": _nequip_package,
}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gives_one_line_and_changes_nothing(case, workspace):
    made = RUNNERS[case.entry_point](case, workspace)
    check_case(case, made, workspace["folder"], cli_env())


@pytest.mark.parametrize("name", list(unusual_valid_structures()))
def test_unusual_but_valid_structures_evaluate_to_finite_values(name, workspace):
    from eip_plugins.nequip import NequIPUQCalculator

    calc = NequIPUQCalculator.from_saved_model(str(workspace["folder"] / "head.ckpt"))
    check_finite_results(calc, unusual_valid_structures()[name])
