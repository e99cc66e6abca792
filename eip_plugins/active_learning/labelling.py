"""Label frames with a reference ASE calculator, skipping (and logging) failures."""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable

import numpy as np

log = logging.getLogger(__name__)

ENERGY_KEY = "REF_energy"
FORCES_KEY = "REF_forces"


#: ``--reference`` value of the shipped default
DEFAULT_REFERENCE = "gfn2-xtb"


def tblite_reference():
    """GFN2-xTB through tblite, the shipped default reference (``pip install tblite``)."""
    try:
        from tblite.ase import TBLite
    except ImportError as err:
        raise ImportError(
            "the default reference, GFN2-xTB, needs tblite, which is not installed: "
            'pip install "eip-plugins[label]" (or pip install tblite), or pass your own '
            "reference with --reference MODULE:FUNCTION"
        ) from err
    return TBLite(method="GFN2-xTB", verbosity=0)


def load_reference(spec: str) -> Callable:
    """The reference factory named by ``spec``: ``"gfn2-xtb"`` (:func:`tblite_reference`) or
    ``"MODULE:FUNCTION"``, a function of no arguments that returns an ASE calculator
    (e.g. ``"my_refs:make_orca"`` from a ``my_refs.py`` in the working directory)."""
    if spec == DEFAULT_REFERENCE:
        return tblite_reference
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(
            f"--reference {spec!r}: expected {DEFAULT_REFERENCE!r} or MODULE:FUNCTION "
            "(a function of no arguments returning an ASE calculator)"
        )
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # a module next to the user, as `python -m` would see it
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"--reference {spec!r}: cannot import {module_name!r} ({err})") from err
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise ValueError(f"--reference {spec!r}: {module_name} has no function {attribute!r}")
    return factory


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
