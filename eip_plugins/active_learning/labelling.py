"""Label frames with a reference ASE calculator, skipping (and logging) failures."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from .references import DEFAULT_REFERENCE, load_reference, tblite_reference

__all__ = [
    "DEFAULT_REFERENCE",
    "ENERGY_KEY",
    "FORCES_KEY",
    "label_frame",
    "label_frames",
    "load_reference",
    "tblite_reference",
]
log = logging.getLogger(__name__)

ENERGY_KEY = "REF_energy"
FORCES_KEY = "REF_forces"


def label_frame(
    frame, make_reference: Callable, energy_key: str = ENERGY_KEY, forces_key: str = FORCES_KEY
):
    """Reference energy (eV) and forces (eV/A) of a copy of ``frame``.

    Returns ``(labelled Atoms, None)``, or ``(None, reason)`` when the reference raised (e.g. an
    SCF that did not converge) or returned non-finite values. Runs on a Dask worker as one task.
    """
    atoms = frame.copy()
    try:
        atoms.calc = make_reference()
        energy = float(atoms.get_potential_energy())
        # the reference's own forces: constraints (FixAtoms, FixCom) must not edit labels
        forces = np.array(atoms.get_forces(apply_constraint=False), dtype=float)
    except Exception as err:  # noqa: BLE001 - any reference failure skips the frame
        return None, f"{type(err).__name__}: {err}".splitlines()[0]
    if not np.isfinite(energy):
        return None, f"the reference returned a non-finite energy ({energy})"
    bad = np.flatnonzero(~np.isfinite(forces).all(axis=1))
    if bad.size:
        i = int(bad[0])
        return None, (
            f"the reference returned non-finite forces on atom {i} "
            f"({atoms.get_chemical_symbols()[i]}): {forces[i].tolist()}"
        )
    atoms.calc = None
    atoms.info[energy_key] = energy
    atoms.arrays[forces_key] = forces
    return atoms, None


def label_frames(
    frames, make_reference: Callable, energy_key: str = ENERGY_KEY, forces_key: str = FORCES_KEY
):
    """:func:`label_frame` for every frame, in this process.

    Returns (labelled frames, list of (index, reason) of the skipped ones).
    """
    labelled, failures = [], []
    for i, frame in enumerate(frames):
        atoms, reason = label_frame(frame, make_reference, energy_key, forces_key)
        if atoms is None:
            log.warning("reference calculation failed for frame %d (skipped): %s", i, reason)
            failures.append((i, reason))
        else:
            labelled.append(atoms)
    return labelled, failures
