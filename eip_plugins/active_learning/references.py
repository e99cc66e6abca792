"""Reference calculators that label the selected frames: GFN2-xTB, PySCF DFT, or the user's own.

A reference is a *factory*: a picklable callable of no arguments returning a fresh ASE
calculator. Factories travel to Dask workers, so the shipped ones are small dataclasses and a
user's ``MODULE:FUNCTION`` is sent by value (the workers need not see the user's file).

``--reference`` values:

* ``tblite`` (default; ``gfn2-xtb`` is the same): :class:`TBLiteReference`.
* ``pyscf``: :class:`PySCFReference`, Kohn-Sham DFT (or Hartree-Fock) of a molecule.
* ``external``: nobody labels here; the loop writes ``to_label.xyz`` and waits for
  ``labelled.xyz`` (see :mod:`eip_plugins.active_learning.loop`).
* ``MODULE:FUNCTION``: a function of no arguments returning an ASE calculator (VASP, CP2K,
  ORCA, Quantum ESPRESSO... as the user sets it up), e.g. ``my_refs:make_orca`` from a
  ``my_refs.py`` in the working directory.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from ase import units
from ase.calculators.calculator import Calculator, all_changes

#: ``--reference`` value of the shipped default
DEFAULT_REFERENCE = "tblite"
#: ``--reference`` value of the external-labelling mode
EXTERNAL = "external"
_ALIASES = {"gfn2-xtb": "tblite"}


@dataclass(frozen=True)
class TBLiteReference:
    """GFN2-xTB (or another tblite method) through tblite's ASE calculator.

    Attributes:
        method: ``"GFN2-xTB"``, ``"GFN1-xTB"`` or ``"IPEA1-xTB"``.
    """

    method: str = "GFN2-xTB"

    def __call__(self):
        try:
            from tblite.ase import TBLite
        except ImportError as err:
            raise ImportError(
                "the default reference, GFN2-xTB, needs tblite, which is not installed: "
                'pip install "eip-plugins[label]" (or pip install tblite), or pass your own '
                "reference with --reference MODULE:FUNCTION"
            ) from err
        return TBLite(method=self.method, verbosity=0)


#: the shipped default factory (GFN2-xTB); kept under its historical name
tblite_reference = TBLiteReference()


@dataclass(frozen=True)
class PySCFReference:
    """Kohn-Sham DFT or Hartree-Fock of a molecule with PySCF (``pip install pyscf``).

    Attributes:
        method: an exchange-correlation functional PySCF knows (``"PBE"``, ``"B3LYP"``,
            ``"wB97X-V"``...) or ``"HF"``.
        basis: a basis set name PySCF knows (``"def2-svp"``, ``"cc-pvdz"``, ``"sto-3g"``...).
        charge: total charge, e.
        conv_tol: SCF energy convergence threshold, Hartree.
        max_cycle: SCF iterations before the frame is given up (and skipped).
    """

    method: str = "PBE"
    basis: str = "def2-svp"
    charge: int = 0
    conv_tol: float = 1e-9
    max_cycle: int = 100

    def __call__(self):
        try:
            import pyscf  # noqa: F401
        except ImportError as err:
            raise ImportError(
                '--reference pyscf needs PySCF, which is not installed: pip install "eip-plugins'
                '[label]" (or pip install pyscf)'
            ) from err
        return PySCFCalculator(self)


class PySCFCalculator(Calculator):
    """ASE calculator of energy (eV) and forces (eV/A) for a :class:`PySCFReference`.

    Restricted for closed shells, unrestricted when the electron count is odd or
    ``atoms.info["spin"]`` (2S, the number of unpaired electrons) is set. Periodic structures are
    refused (use ``--reference MODULE:FUNCTION`` with ``pyscf.pbc`` or a periodic DFT code). An
    SCF that does not converge raises, so the loop skips the frame and logs it.
    """

    implemented_properties = ["energy", "forces"]

    def __init__(self, reference: PySCFReference, **kwargs):
        super().__init__(**kwargs)
        self.reference = reference

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        from pyscf import dft, gto, scf

        ref = self.reference
        if self.atoms.pbc.any():
            raise ValueError(
                "--reference pyscf labels molecules only (this structure is periodic); use "
                "--reference MODULE:FUNCTION with pyscf.pbc or your periodic DFT code"
            )
        n_electrons = int(self.atoms.numbers.sum()) - ref.charge
        spin = int(self.atoms.info.get("spin", n_electrons % 2))
        mol = gto.M(
            atom=[
                (s, tuple(p))
                for s, p in zip(
                    self.atoms.get_chemical_symbols(), self.atoms.positions, strict=True
                )
            ],
            basis=ref.basis,
            charge=ref.charge,
            spin=spin,
            unit="Angstrom",
            verbose=0,
        )
        restricted = spin == 0
        if ref.method.upper() == "HF":
            mf = scf.RHF(mol) if restricted else scf.UHF(mol)
        else:
            mf = dft.RKS(mol) if restricted else dft.UKS(mol)
            mf.xc = ref.method
        mf.conv_tol = ref.conv_tol
        mf.max_cycle = ref.max_cycle
        energy = mf.kernel()
        if not mf.converged:
            raise RuntimeError(f"PySCF SCF ({ref.method}/{ref.basis}) did not converge")
        gradient = mf.nuc_grad_method().kernel()  # Hartree/Bohr
        self.results["energy"] = float(energy) * units.Hartree
        self.results["forces"] = -np.asarray(gradient) * units.Hartree / units.Bohr


def load_reference(spec: str, tblite_method: str = "GFN2-xTB", pyscf: dict | None = None):
    """The reference factory named by ``spec`` (see the module docstring), or ``None`` for
    ``"external"``.

    Args:
        tblite_method: method of ``tblite``.
        pyscf: keyword arguments of :class:`PySCFReference` (method, basis, charge...).
    """
    name = _ALIASES.get(spec, spec)
    if name == "tblite":
        return TBLiteReference(tblite_method)
    if name == "pyscf":
        return PySCFReference(**(pyscf or {}))
    if name == EXTERNAL:
        return None
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(
            f"--reference {spec!r}: expected 'tblite', 'pyscf', 'external' or MODULE:FUNCTION "
            "(a function of no arguments returning an ASE calculator)"
        )
    return _user_factory(spec, module_name, attribute)


def _user_factory(spec: str, module_name: str, attribute: str) -> Callable:
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # a module next to the user, as `python -m` would see it
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"--reference {spec!r}: cannot import {module_name!r} ({err})") from err
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise ValueError(f"--reference {spec!r}: {module_name} has no function {attribute!r}")
    _ship_by_value(module)
    return factory


def _ship_by_value(module) -> None:
    """Pickle the user's module by value, so Dask workers that cannot import it (another
    folder, another machine) still get the factory. Installed packages stay by reference."""
    try:
        import cloudpickle
    except ImportError:  # no Dask installed: nothing is pickled
        return
    path = getattr(module, "__file__", None) or ""
    if "site-packages" in path or "dist-packages" in path:
        return
    try:
        cloudpickle.register_pickle_by_value(module)
    except ValueError:  # a builtin or a namespace package: pickled by reference
        pass
