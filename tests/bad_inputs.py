"""The bad-input sweep: every entry point against the bad inputs that apply to it.

One list, three uses:

- ``tests/mace/test_bad_input_sweep.py`` and ``tests/nequip/test_bad_input_sweep.py`` run every
  case of their environment (a case without a runner there fails, so the list and the tests
  cannot drift apart) and check that it ends in one line matching ``match`` — a CLI with exit
  status != 0 and no traceback, the Python API with a ValueError / FileNotFoundError — and that no
  file of the case's folder (inputs and a pre-existing ``--output``) was modified or removed;
- ``python tests/bad_inputs.py`` prints the README's "What happens on bad input" table, and
  ``tests/docs/test_bad_input_table.py`` checks that the README holds exactly that table.

The workspace every case sees is made by :func:`make_workspace` (data files, broken model files);
the framework suites add their real models to it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

#: bad input -> (what the README calls it, the message a user gets, with placeholders)
BAD_INPUTS = {
    "missing-model": ("model file does not exist", "`model file FILE does not exist`"),
    "empty-model": ("empty model file", "`FILE is not a … model file: the file is empty`"),
    "corrupt-model": (
        "corrupt model file (`echo garbage > FILE`)",
        "`FILE is not a … model file: not a torch/zip archive (truncated, or another kind of file)`",
    ),
    "truncated-model": (
        "truncated model file (first half of a real one)",
        "`FILE is not a … model file: not a torch/zip archive …` or `FILE is not a MACE model "
        "file (torch.load failed: RuntimeError: …)`",
    ),
    "foreign-model": (
        "a torch file holding no model of this framework (a dict; a MACE model given to NequIP)",
        "`FILE is not a MACE model file: it holds a dict …` / `FILE could not be loaded as a "
        "NequIP checkpoint … (ModuleNotFoundError: No module named 'mace') …`",
    ),
    "plain-model": (
        "a plain model where a head is needed",
        "`FILE is a plain MACE model without an evidential head … eip-attach mace …`",
    ),
    "head-model": (
        "a model that already has a head (`eip-attach` without `--replace`)",
        "`FILE already has an evidential 'e2ip' head; pass --replace …`",
    ),
    "compiled-model": (
        "a compiled model where the eager one is needed",
        "`FILE is a TorchScript-compiled model; give the eager '*.model' file instead`",
    ),
    "moved-training-data": (
        "a checkpoint whose training data file is gone (copied to another machine)",
        "`FILE could not be loaded: it refers to …/train.xyz, which does not exist (a checkpoint "
        "names its training data by the paths it was trained with …)`",
    ),
    "missing-data": ("data file does not exist", "`data file FILE does not exist`"),
    "empty-data": ("empty data file", "`data file FILE is empty`"),
    "corrupt-data": (
        "data file ase.io cannot parse",
        "`data file FILE cannot be read by ase.io (XYZError: …); give an extxyz file …`",
    ),
    "nan-positions": (
        "NaN positions",
        "`FILE: structure 3: atom 2 (O) has a non-finite position [-0.80, nan, 0.67]`",
    ),
    "nan-forces": (
        "NaN reference forces",
        "`FILE: structure 3: atom 2 (O) has non-finite forces 'REF_forces' […]`",
    ),
    "missing-forces": (
        "no reference forces under the key",
        "`FILE: structure 0 has no forces under arrays['REF_forces'] (set --forces_key)`",
    ),
    "unknown-element": (
        "an element the model was not trained on",
        "`FILE: structure 2 contains element(s) ['Si'] the model does not know (it knows …)`",
    ),
    "empty-structure": ("a structure with no atoms", "`cannot evaluate an empty structure`"),
    "overlapping-atoms": (
        "two atoms on top of each other",
        "`atoms 0 and 1 overlap (distance 0 A < 0.1 A): the structure is broken`",
    ),
    "nan-cell": ("NaN periodic cell", "`non-finite (NaN/inf) cell […] with pbc=[…]`"),
    "degenerate-cell": (
        "zero or flat periodic cell",
        "`the periodic cell is degenerate: lattice vectors […] are zero or linearly dependent`",
    ),
    "out-of-range": (
        "out-of-range setting",
        "`invalid density power=0.5: must be >= 1`, `--eip_quantile=1.5 …`, "
        "`invalid UDD parameter A=-1.0 …`",
    ),
    "unknown-option": (
        "a calculator keyword it does not have (misspelt, or another calculator's, e.g. "
        "`compile_mode`)",
        "`MACEUQCalculator: unknown keyword argument(s) ['compile_mode']; it takes model_paths, "
        "device, …`",
    ),
    "output-is-input": (
        "`--output` equal to `--model`",
        "`--output must differ from --model: the input model is never modified`",
    ),
    "unwritable-output": (
        "`--output` inside a file",
        "`--output FILE/out.model: FILE is a file, not a folder`, before any training",
    ),
    "read-only-output": (
        "`--output` in a read-only folder (`/sys`: read-only even for root, as the tests run)",
        "`--output /sys/out.model: cannot write in /sys (Permission denied)`, before any training",
    ),
    "failing-reference": (
        "`eip-al --reference` that cannot be imported, or fails / returns NaN on the start "
        "structure",
        "`--reference 'nowhere:make': cannot import 'nowhere' …` / `the reference calculator "
        "failed on start structure 0 (the reference returned non-finite forces on atom 0 (C): "
        "[nan, nan, nan]); nothing was run`",
    ),
    "unreachable-scheduler": (
        "`eip-al --scheduler` where no Dask scheduler answers",
        "`--scheduler tcp://127.0.0.1:9: no Dask scheduler answered within 2 s (…)`",
    ),
    "workdir-in-use": (
        "`eip-al --workdir` that holds a run, without `--resume`",
        "`--workdir FOLDER holds an active-learning run: add --resume to go on with it, or "
        "choose another --workdir`",
    ),
    "bad-start": (
        "`eip-al --start FILE@INDEX` out of range",
        "`--start FILE@99: index '99' is not one of 0..7 (FILE holds 8 structures)`",
    ),
}


@dataclass(frozen=True)
class Case:
    """One entry point given one bad input; ``match`` is a regex for the one-line message."""

    environment: str  # "mace" | "nequip"
    entry_point: str
    bad_input: str
    match: str

    @property
    def id(self) -> str:
        return f"{self.entry_point}/{self.bad_input}".replace(" ", "_")


def _cases(environment: str, entry_point: str, **matches: str) -> list[Case]:
    return [
        Case(environment, entry_point, bad.replace("_", "-"), match)
        for bad, match in matches.items()
    ]


_EIP_AL_RUN = dict(
    failing_reference=r"eip-al: error: the reference calculator failed on start structure 0 "
    r"\(the reference returned non-finite forces on atom 0 \(\w+\): \[nan, nan, nan\]\); "
    r"nothing was run",
    unreachable_scheduler=r"eip-al: error: --scheduler tcp://127\.0\.0\.1:9: no Dask scheduler "
    r"answered within 2 s",
    workdir_in_use=r"eip-al: error: --workdir al_workdir-in-use holds an active-learning run: "
    r"add --resume to go on with it",
)
_MODEL_FILE = dict(
    missing_model=r"model file \S*missing\.model does not exist",
    empty_model=r"empty\.model is not a MACE model file: the file is empty",
    corrupt_model=r"garbage\.model is not a MACE model file: not a torch/zip archive",
    truncated_model=r"truncated\.model is not a MACE model file",
    foreign_model=r"dict\.model is not a MACE model file: it holds a dict",
)
_DATA_FILE = dict(
    missing_data=r"data file \S*missing\.xyz does not exist",
    empty_data=r"data file \S*empty\.xyz is empty",
    corrupt_data=r"data file \S*garbage\.xyz cannot be read by ase\.io",
    nan_positions=r"nan_positions\.xyz: structure 3: atom 2 \(O\) has a non-finite position",
    nan_forces=r"nan_forces\.xyz: structure 3: atom 2 \(O\) has non-finite forces 'REF_forces'",
    missing_forces=r"missing_forces\.xyz: structure 0 has no forces under arrays\['REF_forces'\]",
    unknown_element=r"unknown_element\.xyz: structure 2 contains element\(s\) \['Si'\]",
)
_STRUCTURE = dict(
    nan_positions=r"non-finite \(NaN/inf\) positions for atom\(s\) \[2\]",
    unknown_element=r"element\(s\) \['Si'\] are not known to this model",
    empty_structure=r"cannot evaluate an empty structure \(0 atoms\)",
    overlapping_atoms=r"atoms 0 and 1 overlap \(distance 0 A < 0\.1 A\)",
    nan_cell=r"non-finite \(NaN/inf\) cell",
    degenerate_cell=r"the periodic cell is degenerate",
)
_NEQUIP_MODEL = dict(
    missing_model=r"model file \S*missing\.ckpt does not exist",
    empty_model=r"empty\.ckpt is not a NequIP checkpoint.*: the file is empty",
    corrupt_model=r"garbage\.ckpt is not a NequIP checkpoint.*: not a torch/zip archive",
)

_UNKNOWN_NEQUIP_OPTION = (
    r"NequIPUQCalculator: unknown keyword argument\(s\) \['torchscript_heads'\]; it takes model, "
    r"device, .*energy_units_to_eV"
)
_UNWRITABLE = r"{tool}: error: --output good\.xyz/out\.\w+: good\.xyz is a file, not a folder"
_READ_ONLY = r"{tool}: error: --output /sys/out\.\w+: cannot write in /sys \(Permission denied\)"

CASES: list[Case] = [
    # --- MACE environment ---------------------------------------------------------------------
    *_cases(
        "mace",
        "MACEUQCalculator",
        **_MODEL_FILE,
        plain_model=r"plain\.model is a plain MACE model without an evidential head.*eip-attach",
        **_STRUCTURE,
        out_of_range=r"invalid UDD parameter A=-1(\.0)?: must be >= 0",
        unknown_option=r"MACEUQCalculator: unknown keyword argument\(s\) \['compile_mode'\]; it "
        r"takes model_paths, device, default_dtype",
    ),
    *_cases(
        "mace",
        "mace_eval_configs",
        **{k: "mace_eval_configs: error: .*" + v for k, v in _MODEL_FILE.items()},
        missing_data=r"mace_eval_configs: error: data file \S*missing\.xyz does not exist",
        corrupt_data=r"mace_eval_configs: error: data file \S*garbage\.xyz cannot be read",
        nan_positions=r"mace_eval_configs: error: \S*nan_positions\.xyz: structure 3: atom 2 "
        r"\(O\) has a non-finite position",
        unknown_element=r"mace_eval_configs: error: \S*unknown_element\.xyz: structure 2: "
        r"contains element\(s\) \['Si'\]",
    ),
    *_cases(
        "mace",
        "mace_run_train --head",
        nan_positions=r"--train_file \S*nan_positions\.xyz: frame 3: atom 2 \(O\) has a "
        r"non-finite position",
        nan_forces=r"--train_file \S*nan_forces\.xyz: frame 3: atom 2 \(O\) has non-finite "
        r"forces 'REF_forces'",
        missing_forces=r"--train_file \S*missing_forces\.xyz: frame 0 has no reference forces",
        corrupt_data=r"--train_file \S*garbage\.xyz: cannot be read",
        missing_data=r"--train_file \S*missing\.xyz: data file does not exist",
        empty_data=r"--train_file \S*empty\.xyz: data file is empty",
        out_of_range=r"--eip_quantile.*1\.5",
    ),
    *_cases(
        "mace",
        "eip-attach mace",
        **{k: "eip-attach: error: .*" + v for k, v in _MODEL_FILE.items()},
        head_model=r"eip-attach: error: \S*head\.model already has an evidential 'e2ip' head; "
        r"pass --replace",
        compiled_model=r"eip-attach: error: \S*compiled\.model is a TorchScript-compiled model",
        **{k: "eip-attach: error: .*" + v for k, v in _DATA_FILE.items()},
        out_of_range=r"eip-attach: error: .*quantile.*1\.5",
        output_is_input=r"eip-attach: error: --output must differ from --model",
        unwritable_output=_UNWRITABLE.format(tool="eip-attach"),
        read_only_output=_READ_ONLY.format(tool="eip-attach"),
    ),
    *_cases(
        "mace",
        "eip-calibrate mace",
        **{k: "eip-calibrate: error: .*" + v for k, v in _MODEL_FILE.items()},
        plain_model=r"eip-calibrate: error: \S*plain\.model is a plain MACE model without an "
        r"evidential head",
        **{k: "eip-calibrate: error: .*" + v for k, v in _DATA_FILE.items()},
        out_of_range=r"eip-calibrate: error: invalid density power=0\.5: must be >= 1",
        output_is_input=r"eip-calibrate: error: --output must differ from --model",
        unwritable_output=_UNWRITABLE.format(tool="eip-calibrate"),
        read_only_output=_READ_ONLY.format(tool="eip-calibrate"),
    ),
    *_cases(
        "mace",
        "eip-al",
        missing_model=r"eip-al: error: model file \S*missing\.model does not exist",
        corrupt_model=r"eip-al: error: \S*garbage\.model is not a MACE model file: not a "
        r"torch/zip archive",
        missing_data=r"eip-al: error: (training|data) file \S*missing\.xyz does not exist",
        corrupt_data=r"eip-al: error: data file \S*garbage\.xyz cannot be read by ase\.io",
        nan_positions=r"eip-al: error: --start \S*nan_positions\.xyz@3: structure 3: atom 2 "
        r"\(O\) has a non-finite position",
        nan_forces=r"eip-al: error: training file \S*nan_forces\.xyz: structure 3: atom 2 \(O\) "
        r"has non-finite forces",
        out_of_range=r"eip-al: error: invalid threshold=nan",
        bad_start=r"eip-al: error: --start \S*good\.xyz@99: index '99' is not one of 0\.\.7",
        **_EIP_AL_RUN,
    ),
    # --- NequIP environment -------------------------------------------------------------------
    *_cases(
        "nequip",
        "eip-al nequip",
        missing_model=r"eip-al: error: model file \S*missing\.ckpt does not exist",
        corrupt_model=r"eip-al: error: \S*garbage\.ckpt is not a NequIP checkpoint.*: not a "
        r"torch/zip archive",
        missing_data=r"eip-al: error: (training|data) file \S*missing\.xyz does not exist",
        corrupt_data=r"eip-al: error: data file \S*garbage\.xyz cannot be read by ase\.io",
        nan_positions=r"eip-al: error: --start \S*nan_positions\.xyz@3: structure 3: atom 2 "
        r"\(O\) has a non-finite position",
        nan_forces=r"eip-al: error: training file \S*nan_forces\.xyz: structure 3: atom 2 \(O\) "
        r"has non-finite forces",
        out_of_range=r"eip-al: error: invalid threshold=nan",
        bad_start=r"eip-al: error: --start \S*good\.xyz@99: index '99' is not one of 0\.\.7",
        **_EIP_AL_RUN,
    ),
    *_cases(
        "nequip",
        "NequIPUQCalculator.from_saved_model",
        **_NEQUIP_MODEL,
        truncated_model=r"truncated\.ckpt (is not|could not be loaded as) a NequIP checkpoint",
        foreign_model=r"mace\.model could not be loaded as a NequIP checkpoint .*"
        r"ModuleNotFoundError: No module named 'mace",
        **_STRUCTURE,
        out_of_range=r"udd: unknown parameter\(s\) \['Q'\]",
        unknown_option=_UNKNOWN_NEQUIP_OPTION,
    ),
    *_cases(
        "nequip",
        "NequIPUQCalculator.from_compiled_model",
        missing_model=r"model file \S*missing\.nequip\.pt2 does not exist",
        empty_model=r"empty\.nequip\.pt2 is not a NequIP model compiled .*: the file is empty",
        corrupt_model=r"garbage\.nequip\.pt2 is not a NequIP model compiled .*: not a torch/zip",
        nan_positions=_STRUCTURE["nan_positions"],
        unknown_element=_STRUCTURE["unknown_element"],
        unknown_option=_UNKNOWN_NEQUIP_OPTION,
    ),
    *_cases(
        "nequip",
        "eip-attach nequip",
        **{k: "eip-attach: error: .*" + v for k, v in _NEQUIP_MODEL.items()},
        truncated_model=r"eip-attach: error: \S*truncated\.ckpt is not a NequIP checkpoint",
        foreign_model=r"eip-attach: error: \S*mace\.model is not a NequIP checkpoint .*"
        r"No module named 'mace",
        head_model=r"eip-attach: error: \S*head\.ckpt already has an evidential 'e2ip' head",
        compiled_model=r"eip-attach: error: \S*\.nequip\.pt2 is a compiled \(AOTInductor\) model",
        **{k: "eip-attach: error: .*" + v for k, v in _DATA_FILE.items()},
        out_of_range=r"eip-attach: error: .*quantile.*1\.5",
        output_is_input=r"eip-attach: error: --output must differ from --model",
        unwritable_output=_UNWRITABLE.format(tool="eip-attach"),
        read_only_output=_READ_ONLY.format(tool="eip-attach"),
    ),
    *_cases(
        "nequip",
        "nequip-train",
        **{
            k: "nequip-train: error: train_file: .*" + v
            for k, v in _DATA_FILE.items()
            if k not in ("missing_forces", "unknown_element")
        },
        missing_forces=r"nequip-train: error: train_file: data file \S*missing_forces\.xyz: "
        r"structure 0 has no forces under 'REF_forces'",
        unknown_element=r"nequip-train: error: train_file: data file \S*unknown_element\.xyz: "
        r"structure 2 contains element\(s\) \['Si'\] that are not in chemical_species",
        out_of_range=r"nequip-train: error: invalid lam=-1(\.0)?: \(evidence regulariser "
        r"weight\) must be >= 0",
    ),
    *_cases(
        "nequip",
        "nequip-compile",
        **{k: "nequip-compile: error: .*" + v for k, v in _NEQUIP_MODEL.items()},
        truncated_model=r"nequip-compile: error: \S*truncated\.ckpt (is not|could not be loaded "
        r"as) a NequIP checkpoint",
        foreign_model=r"nequip-compile: error: \S*mace\.model could not be loaded as a NequIP "
        r"checkpoint .*No module named 'mace",
        compiled_model=r"nequip-compile: error: \S*model\.nequip\.pt2 is already a compiled "
        r"model: nequip-compile needs the checkpoint",
        moved_training_data=r"nequip-compile: error: \S*moved_data\.ckpt could not be loaded: "
        r"it refers to \S*gone/train\.xyz, which does not exist",
    ),
    *_cases(
        "nequip",
        "nequip-package build",
        corrupt_model=r"nequip-package: error: \S*garbage\.ckpt is not a NequIP checkpoint.*: "
        r"not a torch/zip archive",
        truncated_model=r"nequip-package: error: \S*truncated\.ckpt (is not|could not be loaded "
        r"as) a NequIP checkpoint",
        foreign_model=r"nequip-package: error: \S*mace\.model (could not be loaded as|is not) a "
        r"NequIP checkpoint",
        compiled_model=r"nequip-package: error: \S*model\.nequip\.pt2 is already a compiled "
        r"model: nequip-package needs the checkpoint",
        moved_training_data=r"nequip-package: error: \S*moved_data\.ckpt could not be loaded: "
        r"it refers to \S*gone/train\.xyz, which does not exist .*nequip-package stores an "
        r"example structure",
    ),
    *_cases(
        "nequip",
        "eip-calibrate nequip",
        **{k: "eip-calibrate: error: .*" + v for k, v in _NEQUIP_MODEL.items()},
        foreign_model=r"eip-calibrate: error: \S*mace\.model is not a NequIP checkpoint .*"
        r"No module named 'mace",
        **{k: "eip-calibrate: error: .*" + v for k, v in _DATA_FILE.items()},
        out_of_range=r"eip-calibrate: error: invalid density strength=-1(\.0)?: must be >= 0",
        output_is_input=r"eip-calibrate: error: --output must differ from --model",
        unwritable_output=_UNWRITABLE.format(tool="eip-calibrate"),
        read_only_output=_READ_ONLY.format(tool="eip-calibrate"),
    ),
]


def cases_for(environment: str) -> list[Case]:
    return [c for c in CASES if c.environment == environment]


# -- the workspace ---------------------------------------------------------------------------------
#: bad data input -> the file of the workspace that holds it
DATA_FILES = {
    "missing-data": "missing.xyz",
    "empty-data": "empty.xyz",
    "corrupt-data": "garbage.xyz",
    "nan-positions": "nan_positions.xyz",
    "nan-forces": "nan_forces.xyz",
    "missing-forces": "missing_forces.xyz",
    "unknown-element": "unknown_element.xyz",
}


def make_workspace(folder: Path, source: Path, model_suffix: str) -> Path:
    """Data files and broken model files in ``folder``, from the labelled extxyz ``source``.

    Good: ``good.xyz`` (8 frames), ``valid.xyz`` (4). Bad data: ``empty.xyz``, ``garbage.xyz``,
    ``nan_positions.xyz`` / ``nan_forces.xyz`` (structure 3, atom 2), ``missing_forces.xyz``,
    ``unknown_element.xyz`` (structure 2 has Si). Bad models: ``empty``, ``garbage``, ``dict``
    (``torch.save({"state_dict": {}})``) with ``model_suffix``.
    """
    import ase.io
    import numpy as np
    import torch

    frames = ase.io.read(source, ":12")
    ase.io.write(folder / "good.xyz", frames[:8], format="extxyz")
    ase.io.write(folder / "valid.xyz", frames[8:12], format="extxyz")

    def variant(name, edit):
        copies = [a.copy() for a in frames[:8]]
        edit(copies)
        ase.io.write(folder / name, copies, format="extxyz")

    variant("nan_positions.xyz", lambda f: f[3].positions.__setitem__((2, 1), np.nan))
    variant("nan_forces.xyz", lambda f: f[3].arrays["REF_forces"].__setitem__((2, 1), np.nan))
    variant("missing_forces.xyz", lambda f: [a.arrays.pop("REF_forces") for a in f])
    variant("unknown_element.xyz", lambda f: f[2].numbers.__setitem__(0, 14))
    (folder / "empty.xyz").write_text("")
    (folder / "garbage.xyz").write_text("this is not an extxyz file\n")
    (folder / f"empty{model_suffix}").write_bytes(b"")
    (folder / f"garbage{model_suffix}").write_text("garbage\n")
    torch.save({"state_dict": {}}, folder / f"dict{model_suffix}")
    (folder / "nan_reference.py").write_text(_NAN_REFERENCE)
    (folder / "al_workdir-in-use").mkdir()
    (folder / "al_workdir-in-use" / "al_state.json").write_text('{"version": 2, "generations": []}')
    return folder


#: an ``eip-al --reference nan_reference:make`` whose forces are NaN
_NAN_REFERENCE = """from ase.calculators.emt import EMT


class NaNForces(EMT):
    def calculate(self, *args, **kwargs):
        super().calculate(*args, **kwargs)
        self.results["forces"][:] = float("nan")


def make():
    return NaNForces()
"""


def truncate_copy(source: Path, target: Path) -> Path:
    data = Path(source).read_bytes()
    target.write_bytes(data[: len(data) // 2])
    return target


def bad_structures() -> dict:
    """ASE structures for the calculator cases (ethanol-based, elements C, H, O)."""
    import numpy as np
    from ase import Atoms
    from ase.build import molecule

    ethanol = molecule("CH3CH2OH")
    nan = ethanol.copy()
    nan.positions[2, 1] = np.nan
    overlap = ethanol.copy()
    overlap.positions[1] = overlap.positions[0]
    nan_cell = ethanol.copy()
    nan_cell.cell = [[np.nan, 0, 0], [0, 10, 0], [0, 0, 10]]
    nan_cell.pbc = True
    flat = ethanol.copy()
    flat.cell = [[10, 0, 0], [0, 10, 0], [10, 10, 0]]
    flat.pbc = True
    return {
        "nan-positions": nan,
        "unknown-element": molecule("SiH4"),
        "empty-structure": Atoms(),
        "overlapping-atoms": overlap,
        "nan-cell": nan_cell,
        "degenerate-cell": flat,
    }


def unusual_valid_structures() -> dict:
    """Structures that are odd but valid: they must evaluate to finite energies, forces and
    uncertainties (no error): one atom, atoms beyond the cutoff of each other (empty neighbour
    lists), a periodic cell smaller than the cutoff (the model sees periodic images)."""
    from ase import Atoms
    from ase.build import molecule

    small_cell = molecule("H2O")
    small_cell.cell = [3.0, 3.0, 3.0]
    small_cell.pbc = True
    small_cell.center()
    return {
        "single atom": Atoms("C", positions=[[0.0, 0.0, 0.0]]),
        "isolated atoms": Atoms("CHO", positions=[[0, 0, 0], [9.0, 0, 0], [0, 9.0, 0]]),
        "cell smaller than the cutoff": small_cell,
    }


def check_finite_results(calc, atoms) -> None:
    import numpy as np

    atoms.calc = calc
    forces = atoms.get_forces()
    assert np.isfinite(atoms.get_potential_energy()) and np.isfinite(forces).all()
    for key in ("forces_uncertainty", "forces_epistemic_cov", "forces_aleatoric_cov"):
        assert np.isfinite(calc.results[key]).all(), key
    assert (calc.results["forces_uncertainty"] > 0).all()


def digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (relative path -> hex digest)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@dataclass(frozen=True)
class InProcessCLI:
    """A console script's ``main(argv) -> exit status``, run in this process (no interpreter
    start-up: the sweep's many CLI cases would otherwise cost minutes of imports); what it
    prints and returns is what the console script prints and returns."""

    main: object
    argv: tuple

    def run(self, folder: Path):
        import contextlib
        import io
        import os
        from types import SimpleNamespace

        out, err, cwd = io.StringIO(), io.StringIO(), os.getcwd()
        os.chdir(folder)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = self.main([str(a) for a in self.argv])
        finally:
            os.chdir(cwd)
        return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def eip_al_argv(case: Case, framework: str, model: str) -> tuple:
    """``eip-al`` arguments for a sweep case (``model``: the model file to use)."""
    train = {"missing-data": "missing.xyz", "nan-forces": "nan_forces.xyz"}.get(
        case.bad_input, "good.xyz"
    )
    start = {
        "corrupt-data": "garbage.xyz",
        "nan-positions": "nan_positions.xyz@3",
        "bad-start": "good.xyz@99",
    }.get(case.bad_input, "good.xyz@0")
    extra = {
        "out-of-range": ["--threshold", "nan"],
        "failing-reference": ["--reference", "nan_reference:make"],
        "unreachable-scheduler": ["--scheduler", "tcp://127.0.0.1:9", "--scheduler_timeout", "2"],
    }.get(case.bad_input, [])
    return ("--framework", framework, "--model", model, "--train_file", train, "--start", start,
            "--workdir", f"al_{case.bad_input}", "--steps", "4", "--train_command", "true",
            "--model_path", "x", "--workers", "0", *extra)  # fmt: skip


def check_case(case: Case, made, folder: Path, env: dict) -> None:
    """Run one case and check it: ``made`` is a callable (the Python API: it must raise a
    one-line ValueError / FileNotFoundError matching ``case.match``), an :class:`InProcessCLI`
    or a command line (run in ``folder`` with ``env``); a CLI must pass
    :func:`check_cli_failure`. No file of ``folder`` may change."""
    import re
    import subprocess

    import pytest

    before = digest(folder)
    if isinstance(made, InProcessCLI):
        check_cli_failure(made.run(folder), case.match)
    elif callable(made):
        with pytest.raises((ValueError, FileNotFoundError)) as info:
            made()
        message = str(info.value)
        assert "\n" not in message.strip(), message
        assert re.search(case.match, message), f"{message!r} does not match {case.match!r}"
    else:
        proc = subprocess.run(
            [str(c) for c in made], cwd=folder, env=env, capture_output=True, text=True, timeout=600
        )
        check_cli_failure(proc, case.match)
    after = digest(folder)
    changed = [name for name, sha in before.items() if after.get(name) != sha]
    assert not changed, f"modified or removed: {changed}"


def check_cli_failure(proc, match: str) -> str:
    """A CLI case: exit != 0, no traceback, and the last stderr line matches; returns it."""
    import re

    assert proc.returncode != 0, f"exit 0:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert lines, "no message on stderr"
    assert re.search(match, lines[-1]), f"{lines[-1]!r} does not match {match!r}"
    return lines[-1]


# -- the README table ----------------------------------------------------------------------------
TABLE_START = (
    "<!-- bad-input-table: generated by `python tests/bad_inputs.py`; checked by tests/docs -->"
)
TABLE_END = "<!-- bad-input-table: end -->"


_TOOLS = {  # entry point -> (what the README calls it, framework)
    "MACEUQCalculator": ("calculators", "MACE"),
    "NequIPUQCalculator.from_saved_model": ("calculators", "NequIP"),
    "NequIPUQCalculator.from_compiled_model": ("calculators", "NequIP compiled"),
    "mace_eval_configs": ("`mace_eval_configs`", None),
    "mace_run_train --head": ("`mace_run_train --head`", None),
    "eip-attach mace": ("`eip-attach`", "MACE"),
    "eip-attach nequip": ("`eip-attach`", "NequIP"),
    "eip-calibrate mace": ("`eip-calibrate`", "MACE"),
    "eip-calibrate nequip": ("`eip-calibrate`", "NequIP"),
    "eip-al": ("`eip-al`", "MACE"),
    "eip-al nequip": ("`eip-al`", "NequIP"),
    "nequip-train": ("`nequip-train -cn config_with_eip`", None),
    "nequip-compile": ("`nequip-compile`", None),
    "nequip-package build": ("`nequip-package build`", None),
}


def _checked_at(bad_input: str) -> str:
    tools: dict[str, list[str]] = {}
    for case in CASES:
        if case.bad_input == bad_input:
            tool, framework = _TOOLS[case.entry_point]
            frameworks = tools.setdefault(tool, [])
            if framework and framework not in frameworks:
                frameworks.append(framework)
    if not tools:
        raise ValueError(f"bad input {bad_input!r} has no case")
    return ", ".join(f"{t} ({', '.join(f)})" if f else t for t, f in tools.items())


def readme_table() -> str:
    """Markdown table: bad input | where it is checked | what you get."""
    rows = ["| bad input | checked in | what you get (one line; CLIs exit ≠ 0), e.g. |"]
    rows.append("|---|---|---|")
    for key, (what, message) in BAD_INPUTS.items():
        rows.append(f"| {what} | {_checked_at(key)} | {message} |")
    return "\n".join([TABLE_START, *rows, TABLE_END])


if __name__ == "__main__":
    print(readme_table())
