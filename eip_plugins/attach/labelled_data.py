"""Reading the labelled structures ``eip-attach`` trains on (framework-neutral, ASE only)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import ase.data
import ase.io


class AttachError(ValueError):
    """Bad input to ``eip-attach`` (the message names the file, key or element)."""


def read_labelled(path, forces_key: str, known_numbers: set[int]) -> list:
    """Read ASE-readable frames; every frame must have forces and only elements the model knows.

    Args:
        path: data file (extxyz or any format ``ase.io.read`` knows).
        forces_key: ``atoms.arrays`` key of the reference forces (N, 3), eV/A.
        known_numbers: atomic numbers the model was trained on.
    """
    path = Path(path)
    if not path.is_file():
        raise AttachError(f"data file {path} does not exist")
    frames = ase.io.read(path, ":")
    if not frames:
        raise AttachError(f"data file {path} holds no structures")
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
    return frames


def check_output_path(model_path, output) -> None:
    """The input model is only read: refuse an output path that is the input file."""
    if Path(output).resolve() == Path(model_path).resolve():
        raise AttachError("--output must differ from --model: the input model is never modified")


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
