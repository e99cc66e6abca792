"""``hydra.callbacks`` entry of ``config_with_eip``: bad input to ``nequip-train`` ends in one line.

Without it, an error in the data files or the config reaches the user as Hydra's stack trace,
often without the value at fault (a missing data file is ``InstantiationException: Error in call
to target 'nequip.data.dataset.ase_dataset.ASEDataset': FileNotFoundError(2, 'No such file or
directory')``). With it::

    nequip-train: error: train_file: data file missing.xyz does not exist (...)
    nequip-train: error: train_file: data file train.xyz: structure 3: atom 0 (C) has a
        non-finite position [nan, 0.0, 0.0]
    nequip-train: error: training_module.model (eip_plugins.nequip.EvidentialNequIPGNNModel):
        invalid lam=-1.0: (evidence regulariser weight) must be >= 0

- ``on_job_start`` (before NequIP reads anything): every data file the config names at the top
  level (``train_file``, ``val_file``, ``test_file``) must be given, exist and (``check_data``)
  hold finite positions, cells and forces (the file key mapped to ``forces`` in
  ``data.key_mapping``) and only elements of ``chemical_species``.
- ``on_job_end`` of a failed job: an error of the input kind (``ValueError``, ``KeyError``,
  ``TypeError``, ``FileNotFoundError`` and other ``OSError``, ``AssertionError``, OmegaConf's
  missing or invalid values), also when Hydra's ``instantiate`` wraps it, is printed as one line
  naming the config key, and the process exits with status 1. Other errors keep the full stack
  trace (nequip-train sets ``HYDRA_FULL_ERROR=1``), and so does every error with
  ``EIP_FULL_ERRORS=1`` in the environment.

Usage (in ``config_with_eip.yaml``)::

    hydra:
      callbacks:
        one_line_errors:
          _target_: eip_plugins.nequip.OneLineErrors
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..model_files import error_summary

DATA_KEYS = ("train_file", "val_file", "test_file")
INPUT_ERRORS = (ValueError, KeyError, TypeError, OSError, AssertionError, OmegaConfBaseException)
PROGRAM = "nequip-train"
_FULL_KEY = re.compile(r"full_key: (\S+)")
_TARGET = re.compile(r"Error in call to target '([^']+)'")


class OneLineErrors(Callback):
    """Hydra callback: bad data files and config values end ``nequip-train`` with one line.

    Args:
        check_data: read every data file once before training and refuse non-finite positions,
            cells or forces (naming file, structure, atom and value).
    """

    def __init__(self, check_data: bool = True):
        self.check_data = bool(check_data)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if _full_errors():
            return
        problem = data_problem(config, self.check_data)
        if problem:
            _exit(problem)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if _full_errors() or getattr(job_return, "status", None) is None:
            return
        if job_return.status.name != "FAILED":
            return
        error = job_return._return_value
        line = one_line(error) if isinstance(error, BaseException) else None
        if line:
            _exit(line)


def data_problem(config: DictConfig, check_data: bool = True) -> Optional[str]:
    """The first problem of the data files named by ``config``, or None."""
    forces_key, species = _forces_key(config), _species(config)
    read: set = set()  # a file named twice (val_file = test_file) is read once
    for key in DATA_KEYS:
        if key not in config.keys():  # `key in config` is False for a missing (???) value
            continue
        if OmegaConf.is_missing(config, key):
            return f"{key} is not set: add ++{key}=FILE (any ASE-readable file, e.g. extxyz)"
        path = str(config[key])
        if not os.path.isfile(path):
            return (
                f"{key}: data file {path} does not exist (relative paths start where "
                "nequip-train runs)"
            )
        if os.path.getsize(path) == 0:
            return f"{key}: data file {path} is empty"
        if check_data and os.path.realpath(path) not in read:
            read.add(os.path.realpath(path))
            problem = _content_problem(path, forces_key, species)
            if problem:
                return f"{key}: {problem}"
    return None


def one_line(error: BaseException) -> Optional[str]:
    """``"<config key> (<target>): <message>"`` for an input error (possibly wrapped by Hydra's
    instantiate), None for any other error."""
    root = error
    while root.__cause__ is not None or (
        root.__context__ is not None and not root.__suppress_context__
    ):
        root = root.__cause__ or root.__context__
    if not isinstance(root, INPUT_ERRORS):
        return None
    text = str(error)
    where = []
    full_key = _FULL_KEY.search(text) or _FULL_KEY.search(str(root))
    if full_key:
        where.append(full_key.group(1))
    target = _TARGET.search(text)
    if target and full_key:  # without its key, the target (e.g. the training module) says little
        where.append(f"({target.group(1)})")
    message = error_summary(root) if str(root).strip() else type(root).__name__
    if isinstance(root, KeyError):
        message = f"KeyError {message}"
    elif isinstance(root, FileNotFoundError) and root.filename:
        message = f"{root.filename} does not exist"
    return (" ".join(where) + ": " if where else "") + message


def _content_problem(path: str, forces_key: str, species) -> Optional[str]:
    from ..attach.labelled_data import frame_problem, read_structures

    try:
        frames = read_structures(path)
    except ValueError as err:
        return str(err)
    for index, atoms in enumerate(frames):
        where = f"data file {path}: structure {index}"
        calc_results = getattr(atoms.calc, "results", {}) if atoms.calc is not None else {}
        if forces_key not in atoms.arrays and forces_key not in calc_results:
            return (
                f"{where} has no forces under {forces_key!r} (the file key data.key_mapping "
                "maps to forces; the head is trained on forces)"
            )
        problem = frame_problem(atoms, forces_key)
        if problem:
            return f"{where}: {problem}"
        unknown = sorted(set(atoms.get_chemical_symbols()) - set(species or []))
        if species and unknown:
            return (
                f"{where} contains element(s) {unknown} that are not in chemical_species "
                f"{list(species)} (model_type_names)"
            )
    return None


def _species(config: DictConfig):
    species = OmegaConf.select(config, "chemical_species", default=None)
    return [str(s) for s in species] if species is not None else None


def _forces_key(config: DictConfig) -> str:
    mapping = OmegaConf.select(config, "data.key_mapping", default=None) or {}
    for file_key, field in dict(mapping).items():
        if field == "forces":
            return str(file_key)
    return "forces"


def _full_errors() -> bool:
    # not HYDRA_FULL_ERROR: nequip-train sets it for every run
    return os.environ.get("EIP_FULL_ERRORS", "") not in ("", "0")


def _exit(line: str) -> None:
    sys.stdout.flush()
    sys.stderr.write(f"{PROGRAM}: error: {line}\n")
    sys.stderr.flush()
    raise SystemExit(1)  # a BaseException: Hydra's callback runner and reporter let it through
