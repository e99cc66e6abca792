"""Bad-input sweep, MACE environment: every case of ``tests/bad_inputs.py`` for MACE's entry
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
from mace_helpers import BIN, COMMON_ARGS, DATA, MODEL_ARGS, REPO, cli_env

pytestmark = pytest.mark.slow

CASES = cases_for("mace")
SHIPPED_MODEL = REPO / "examples" / "models" / "ethanol_e2ip.model"  # e2ip, float64


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, plain_runs, e2ip_run) -> dict:
    folder = make_workspace(
        tmp_path_factory.mktemp("bad_mace"), DATA / "ethanol_train.xyz", ".model"
    )
    shutil.copy(SHIPPED_MODEL, folder / "head.model")
    shutil.copy(plain_runs["default"]["workdir"] / "plain.model", folder / "plain.model")
    shutil.copy(e2ip_run["compiled"], folder / "compiled.model")
    truncate_copy(folder / "head.model", folder / "truncated.model")
    (folder / "existing_output.model").write_text("a model of the user's: must survive")
    return {"folder": folder, "structures": bad_structures()}


MODEL_FILES = {
    "missing-model": "missing.model",
    "empty-model": "empty.model",
    "corrupt-model": "garbage.model",
    "truncated-model": "truncated.model",
    "foreign-model": "dict.model",
    "plain-model": "plain.model",
    "head-model": "head.model",
    "compiled-model": "compiled.model",
}


def _calculator(case, ws):
    """``MACEUQCalculator``: the Python API raises ValueError / FileNotFoundError."""
    from eip_plugins.mace import MACEUQCalculator

    if case.bad_input in MODEL_FILES:
        return lambda: MACEUQCalculator(model_paths=str(ws["folder"] / MODEL_FILES[case.bad_input]))
    if case.bad_input == "out-of-range":
        return lambda: MACEUQCalculator(model_paths=str(SHIPPED_MODEL), udd={"A": -1.0})
    if case.bad_input == "unknown-option":  # MACECalculator's, which this one does not take
        return lambda: MACEUQCalculator(model_paths=str(SHIPPED_MODEL), compile_mode="default")
    atoms = ws["structures"][case.bad_input]

    def evaluate():
        atoms.calc = MACEUQCalculator(model_paths=str(SHIPPED_MODEL))
        atoms.get_forces()

    return evaluate


def _eval_configs(case, ws):
    model = MODEL_FILES.get(case.bad_input, "head.model")
    configs = DATA_FILES.get(case.bad_input, "good.xyz")
    return [BIN / "mace_eval_configs", f"--model={model}", f"--configs={configs}", "--output=o.xyz"]


def _run_train(case, ws):
    train = DATA_FILES.get(case.bad_input, "good.xyz")
    extra = ["--eip_quantile=1.5", "--head=eip"] if case.bad_input == "out-of-range" else []
    return [
        BIN / "mace_run_train",
        "--name=bad",
        f"--train_file={train}",
        "--valid_file=valid.xyz",
        *MODEL_ARGS,
        *COMMON_ARGS,
        "--max_num_epochs=1",
        "--head=e2ip",
        *extra,
    ]


def _mains() -> dict:
    from eip_plugins.active_learning.cli import main as eip_al
    from eip_plugins.attach.cli import main as eip_attach
    from eip_plugins.calibration.cli import main as eip_calibrate

    return {"eip-attach": eip_attach, "eip-calibrate": eip_calibrate, "eip-al": eip_al}


MAINS = _mains()


def _head_tool(tool):
    def command(case, ws):
        default_model = "plain.model" if tool == "eip-attach" else "head.model"
        model = MODEL_FILES.get(case.bad_input, default_model)
        output = "existing_output.model"
        if case.bad_input == "output-is-input":
            model = output = "head.model"
        if case.bad_input == "unwritable-output":
            output = "good.xyz/out.model"
        if case.bad_input == "read-only-output":
            output = "/sys/out.model"  # read-only for root too (the tests run as root)
        argv = ["mace", "--model", model, "--output", output,
               "--train_file", DATA_FILES.get(case.bad_input, "good.xyz"),
               "--valid_file", "valid.xyz"]  # fmt: skip
        if tool == "eip-attach":
            argv += ["--max_epochs", "1"]
        if case.bad_input == "out-of-range":
            argv += ["--head", "eip", "--eip_quantile", "1.5"] if tool == "eip-attach" else [
                "--density_power", "0.5"]  # fmt: skip
        return InProcessCLI(MAINS[tool], tuple(argv))

    return command


def _eip_al(case, ws):
    model = MODEL_FILES.get(case.bad_input, "head.model")
    return InProcessCLI(MAINS["eip-al"], eip_al_argv(case, "mace", model))


RUNNERS = {
    "MACEUQCalculator": _calculator,
    "mace_eval_configs": _eval_configs,
    "mace_run_train --head": _run_train,
    "eip-attach mace": _head_tool("eip-attach"),
    "eip-calibrate mace": _head_tool("eip-calibrate"),
    "eip-al": _eip_al,
}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gives_one_line_and_changes_nothing(case, workspace):
    made = RUNNERS[case.entry_point](case, workspace)
    check_case(case, made, workspace["folder"], cli_env(OMP_NUM_THREADS="1"))


@pytest.mark.parametrize("name", list(unusual_valid_structures()))
def test_unusual_but_valid_structures_evaluate_to_finite_values(name):
    from eip_plugins.mace import MACEUQCalculator

    calc = MACEUQCalculator(model_paths=str(SHIPPED_MODEL))
    check_finite_results(calc, unusual_valid_structures()[name])
