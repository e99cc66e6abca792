"""Label frames with a reference ASE calculator, skipping (and logging) failures."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

log = logging.getLogger(__name__)

ENERGY_KEY = "REF_energy"
FORCES_KEY = "REF_forces"


def tblite_reference():
    """GFN2-xTB through tblite, the shipped default reference (``pip install tblite``)."""
    try:
        from tblite.ase import TBLite
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the default reference calculator needs tblite: pip install tblite "
            "(or pass your own reference calculator factory)"
        ) from err
    return TBLite(method="GFN2-xTB", verbosity=0)


def label_frames(
    frames, make_reference: Callable, energy_key: str = ENERGY_KEY, forces_key: str = FORCES_KEY
):
    """Compute reference energies (eV) and forces (eV/A) for copies of ``frames``.

    A frame whose reference calculation raises (e.g. SCF not converged) or returns non-finite
    values is skipped with a warning. Returns (labelled frames, list of (index, reason)).
    """
    labelled, failures = [], []
    for i, frame in enumerate(frames):
        atoms = frame.copy()
        try:
            atoms.calc = make_reference()
            energy = float(atoms.get_potential_energy())
            # the reference's own forces: constraints (FixAtoms, FixCom) must not edit labels
            forces = np.array(atoms.get_forces(apply_constraint=False), dtype=float)
        except Exception as err:  # noqa: BLE001 - any reference failure skips the frame
            reason = f"{type(err).__name__}: {err}".splitlines()[0]
            log.warning("reference calculation failed for frame %d (skipped): %s", i, reason)
            failures.append((i, reason))
            continue
        if not (np.isfinite(energy) and np.isfinite(forces).all()):
            log.warning("reference gave non-finite values for frame %d (skipped)", i)
            failures.append((i, "non-finite reference values"))
            continue
        atoms.calc = None
        atoms.info[energy_key] = energy
        atoms.arrays[forces_key] = forces
        labelled.append(atoms)
    return labelled, failures
