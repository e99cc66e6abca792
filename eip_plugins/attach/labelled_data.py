"""Reading the labelled structures ``eip-attach`` trains on (framework-neutral, ASE only)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import ase.data
import ase.io
import numpy as np

from ..model_files import error_summary


class AttachError(ValueError):
    """Bad input to ``eip-attach`` (the message names the file, key or element)."""


def read_structures(path) -> list:
    """All frames of an ASE-readable file; AttachError naming the file when it is missing,
    empty or cannot be parsed (instead of ASE's traceback)."""
    path = Path(path)
    if not path.is_file():
        raise AttachError(f"data file {path} does not exist")
    if path.stat().st_size == 0:
        raise AttachError(f"data file {path} is empty")
    try:
        frames = ase.io.read(path, ":")
    except Exception as err:  # noqa: BLE001 - any parse error: one line naming the file
        reason = error_summary(err)
        raise AttachError(
            f"data file {path} cannot be read by ase.io ({type(err).__name__}: {reason}); "
            "give an extxyz file (or another format ase.io.read knows)"
        ) from err
    if not frames:
        raise AttachError(f"data file {path} holds no structures")
    return frames


def frame_problem(atoms, forces_key: str) -> str | None:
    """What makes one labelled frame unusable (non-finite positions, cell or forces, forces of
    the wrong shape), naming the atom; None if it is fine. Forces: ``arrays[forces_key]``,
    (N, 3) eV/A."""
    positions = atoms.get_positions()
    bad = np.flatnonzero(~np.isfinite(positions).all(axis=1))
    if bad.size:
        j = int(bad[0])
        return f"atom {j} ({atoms[j].symbol}) has a non-finite position {positions[j].tolist()}"
    if atoms.pbc.any() and not np.isfinite(atoms.cell.array).all():
        return f"non-finite cell {atoms.cell.array.tolist()}"
    forces = atoms.arrays.get(forces_key)
    if forces is None:
        return None
    if forces.shape != (len(atoms), 3):
        return f"forces {forces_key!r} have shape {forces.shape}, expected ({len(atoms)}, 3)"
    bad = np.flatnonzero(~np.isfinite(forces).all(axis=1))
    if bad.size:
        j = int(bad[0])
        return f"atom {j} ({atoms[j].symbol}) has non-finite forces {forces_key!r} {forces[j].tolist()}"
    return None


def read_labelled(path, forces_key: str, known_numbers: set[int]) -> list:
    """Read ASE-readable frames; every frame must have finite forces and positions and only
    elements the model knows.

    Args:
        path: data file (extxyz or any format ``ase.io.read`` knows).
        forces_key: ``atoms.arrays`` key of the reference forces (N, 3), eV/A.
        known_numbers: atomic numbers the model was trained on.
    """
    path = Path(path)
    frames = read_structures(path)
    for i, atoms in enumerate(frames):
        if forces_key not in atoms.arrays:
            raise AttachError(
                f"{path}: structure {i} has no forces under arrays[{forces_key!r}] "
                "(set --forces_key)"
            )
        unknown = sorted(set(atoms.numbers.tolist()) - known_numbers)
        if unknown:
            names = [ase.data.chemical_symbols[z] for z in unknown]
            raise AttachError(
                f"{path}: structure {i} contains element(s) {names} the model does not know "
                f"(it knows {[ase.data.chemical_symbols[z] for z in sorted(known_numbers)]})"
            )
        problem = frame_problem(atoms, forces_key)
        if problem:
            raise AttachError(f"{path}: structure {i}: {problem}")
    return frames


def check_output_path(model_path, output) -> None:
    """Before any work: the input model is only read (the output may not be the input file),
    and the output can be written (not a folder; its folder exists or can be made, and a file
    can be created in it), so that a run does not fail after training."""
    output = Path(output)
    if output.resolve() == Path(model_path).resolve():
        raise AttachError("--output must differ from --model: the input model is never modified")
    if output.is_dir():
        raise AttachError(f"--output {output}: is a folder; give the path of the file to write")
    folder = output.parent
    if folder.exists() and not folder.is_dir():
        raise AttachError(f"--output {output}: {folder} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=f".{output.name}.", suffix=".probe")
        os.close(fd)
        os.remove(probe)
    except OSError as err:
        raise AttachError(
            f"--output {output}: cannot write in {folder} ({err.strerror or err})"
        ) from None


def atomic_write(output, write: Callable[[str], None], verify: Callable[[str], None] = None):
    """Write through ``write(tmp_path)`` into a temporary file beside ``output``, optionally
    ``verify(tmp_path)`` it, then rename it into place. Nothing is left behind on failure."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide the model from group/others
        if verify is not None:
            verify(tmp)
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
