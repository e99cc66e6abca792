"""One ASE calculator implementation shared by the MACE and NequIP adapters.

A framework adapter subclasses :class:`UncertaintyCalculator` and implements
:meth:`UncertaintyCalculator.evaluate_model` (load-model and atoms-to-graph code stays in the
adapter); input validation, unit conversion to numpy, and uncertainty-driven dynamics (UDD) live
here once.

Results (ASE units: eV, eV/A, eV/A^3):

===========================  ==========  ==========================================
``energy``, ``free_energy``  float       backbone energy (+ UDD bias energy if on)
``forces``                   (N, 3)      F (+ limited bias force if UDD is on)
``stress``                   (6,)        Voigt, periodic cells, when the backbone has it
``forces_uncertainty``       (N,)        sigma_i
``forces_epistemic_cov``     (N, 3, 3)
``forces_aleatoric_cov``     (N, 3, 3)
``uncertainty``              float       mean_i sigma_i
``uncertainty_max``          float       max_i sigma_i
``forces_feature_distance``  (N,)        sqrt(d_i^2 / D): feature distance to the training atoms
``feature_distance``         float       mean_i of it (``feature_distance_max``: max_i)
``forces_unbiased``          (N, 3)      UDD only: F without bias
``udd_bias_energy``          float       UDD only
``udd_bias_forces``          (N, 3)      UDD only: the limited bias force added to F
===========================  ==========  ==========================================
"""

from __future__ import annotations

import inspect
import math
from dataclasses import asdict

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes
from ase.data import chemical_symbols

from .core import keys
from .core.udd import UDDConfig, limit_bias_forces, udd_bias_energy, udd_bias_forces

MIN_INTERATOMIC_DISTANCE = 0.1  # A; closer atoms are treated as a broken structure

#: the keyword arguments ASE's own ``Calculator`` takes (everything else a subclass does not name
#: is refused: ASE would store it as a "parameter" and silently do nothing with it)
ASE_CALCULATOR_KWARGS = ("restart", "ignore_bad_restart_file", "label", "atoms", "directory")

#: the powers of (energy unit, length unit) of each output that a change of units converts
UNIT_POWERS = {
    "energy": (1, 0),
    "stress": (1, -3),
    "forces": (1, -1),
    keys.FORCES_UNCERTAINTY: (1, -1),
    keys.UNCERTAINTY: (1, -1),
    keys.UNCERTAINTY_MAX: (1, -1),
    keys.FORCES_EPISTEMIC_COV: (2, -2),
    keys.FORCES_ALEATORIC_COV: (2, -2),
    keys.EIP_BETA: (2, -2),
    keys.E2IP_PSI: (2, -2),
    keys.MVE_COV: (2, -2),
}


class UncertaintyCalculator(Calculator):
    """Base ASE calculator returning forces with evidential uncertainties, optionally biased (UDD).

    Args:
        udd: ``None`` (no bias), a :class:`UDDConfig`, or a dict of its fields (A, B, C, D, form).
            Its A (eV), B and D (eV/A) apply to the converted uncertainty and forces.
        energy_units_to_eV, length_units_to_A: the model's energy unit in eV and length unit in
            A (default 1: a model trained in eV and A). As in ``MACECalculator`` and
            ``NequIPCalculator``, the model's outputs are converted, the positions are passed as
            they are: energy x e, forces and sigma x e / l, covariances and the evidential
            scale parameters (``eip_beta``, ``e2ip_psi``, ``mve_cov``) x (e / l)^2, stress
            x e / l^3. E.g. ``energy_units_to_eV=ase.units.kcal / ase.units.mol`` for a model
            trained on kcal/mol labels.
        **kwargs: ASE ``Calculator`` arguments (:data:`ASE_CALCULATOR_KWARGS`); any other name
            raises ValueError (a misspelt option, or one of another calculator's, would
            otherwise be ignored without a word).

    Subclasses implement :meth:`evaluate_model` and set ``known_atomic_numbers``.
    """

    implemented_properties = [
        "energy",
        "free_energy",
        "forces",
        "stress",
        *keys.PER_ATOM_UNCERTAINTY_KEYS,
        *keys.PER_STRUCTURE_UNCERTAINTY_KEYS,
        keys.FORCES_FEATURE_DISTANCE,
        *keys.PER_STRUCTURE_DISTANCE_KEYS,
        "forces_unbiased",
        "udd_bias_energy",
        "udd_bias_forces",
        *keys.RAW_PARAMETER_KEYS,
    ]
    known_atomic_numbers: set[int] | None = None
    supports_udd: bool = True

    def __init__(
        self,
        udd: UDDConfig | dict | None = None,
        energy_units_to_eV: float = 1.0,
        length_units_to_A: float = 1.0,
        **kwargs,
    ):
        unknown = sorted(set(kwargs) - set(ASE_CALCULATOR_KWARGS))
        if unknown:
            raise ValueError(
                f"{type(self).__name__}: unknown keyword argument(s) {unknown}; it takes "
                f"{', '.join(self._keyword_names())} (and ASE's {', '.join(ASE_CALCULATOR_KWARGS)})"
            )
        self.energy_units_to_eV = _unit_factor("energy_units_to_eV", energy_units_to_eV)
        self.length_units_to_A = _unit_factor("length_units_to_A", length_units_to_A)
        super().__init__(**kwargs)
        if isinstance(udd, dict):
            unknown = sorted(set(udd) - set(UDDConfig.__dataclass_fields__))
            if unknown:
                raise ValueError(
                    f"udd: unknown parameter(s) {unknown}; expected some of "
                    f"{list(UDDConfig.__dataclass_fields__)}"
                )
            udd = UDDConfig(**udd)
        if udd is not None and not isinstance(udd, UDDConfig):
            raise TypeError(f"udd must be None, a dict or a UDDConfig, got {type(udd).__name__}")
        if udd is not None and not self.supports_udd:
            raise ValueError(
                f"{type(self).__name__} cannot compute uncertainty-driven bias forces "
                "(no gradient of the uncertainty is available from this model); load the "
                "model from a checkpoint/package instead of a compiled file to use udd=..."
            )
        self.udd = udd

    # -- for subclasses -------------------------------------------------------------------------
    def evaluate_model(self, atoms, keep_graph: bool) -> dict[str, torch.Tensor]:
        """Run the model on ``atoms``.

        Returns torch tensors: ``energy`` () eV, ``forces`` (N, 3) eV/A, optionally ``stress``
        (3, 3) eV/A^3, and the fields ``forces_uncertainty`` (N,), ``forces_epistemic_cov``
        (N, 3, 3), ``forces_aleatoric_cov`` (N, 3, 3), ``uncertainty`` (1,), ``uncertainty_max``
        (1,). With ``keep_graph`` it also returns ``positions`` (N, 3), requiring grad, such that
        ``torch.autograd.grad(out["uncertainty"].sum(), out["positions"])`` works.
        """
        raise NotImplementedError

    def _keyword_names(self) -> list[str]:
        """The named keyword arguments of this class's constructor and of this base."""
        names = []
        for cls in (type(self), UncertaintyCalculator):
            for name, parameter in inspect.signature(cls.__init__).parameters.items():
                named = parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
                if named and name != "self" and name not in names:
                    names.append(name)
        return names

    def in_ase_units(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """:meth:`evaluate_model`'s outputs converted from the model's units to eV and A (see
        ``energy_units_to_eV``); the same dict when both units are 1. Tensors keep their
        autograd graph (UDD differentiates the converted sigma)."""
        energy, length = self.energy_units_to_eV, self.length_units_to_A
        if energy == 1.0 and length == 1.0:
            return out
        factors = {key: energy**a * length**b for key, (a, b) in UNIT_POWERS.items()}
        return {
            key: value * factors[key] if key in factors else value for key, value in out.items()
        }

    # -- validation -------------------------------------------------------------------------------
    def check_atoms(self, atoms) -> None:
        """Raise ValueError naming the problem for structures the model cannot evaluate."""
        pos = atoms.get_positions()
        if len(atoms) == 0:
            raise ValueError("cannot evaluate an empty structure (0 atoms)")
        bad = np.flatnonzero(~np.isfinite(pos).all(axis=1))
        if bad.size:
            raise ValueError(
                f"non-finite (NaN/inf) positions for atom(s) {bad[:10].tolist()} "
                f"({atoms.get_chemical_formula()})"
            )
        if atoms.pbc.any():
            cell = atoms.cell.array
            if not np.isfinite(cell).all():
                raise ValueError(f"non-finite (NaN/inf) cell {cell.tolist()} with pbc={atoms.pbc}")
            periodic = cell[atoms.pbc]
            if np.linalg.matrix_rank(periodic, tol=1e-6) < len(periodic):
                raise ValueError(
                    f"the periodic cell is degenerate: lattice vectors {periodic.tolist()} A "
                    f"(pbc={atoms.pbc.tolist()}) are zero or linearly dependent"
                )
        if self.known_atomic_numbers is not None:
            unknown = sorted(set(atoms.numbers.tolist()) - set(self.known_atomic_numbers))
            if unknown:
                names = [chemical_symbols[z] for z in unknown]
                known = [chemical_symbols[z] for z in sorted(self.known_atomic_numbers)]
                raise ValueError(
                    f"element(s) {names} are not known to this model (it was trained on {known})"
                )
        if len(atoms) > 1:
            i, j, d = _closest_pair(atoms)
            if d < MIN_INTERATOMIC_DISTANCE:
                raise ValueError(
                    f"atoms {i} and {j} overlap (distance {d:.3g} A < "
                    f"{MIN_INTERATOMIC_DISTANCE} A): the structure is broken"
                )

    # -- ASE ----------------------------------------------------------------------------------------
    def calculate(self, atoms=None, properties=None, system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.check_atoms(self.atoms)
        use_bias = self.udd is not None and self.udd.A > 0.0
        out = self.in_ase_units(self.evaluate_model(self.atoms, keep_graph=use_bias))
        results = {
            "energy": _scalar(out["energy"]),
            "forces": _array(out["forces"]),
            keys.FORCES_UNCERTAINTY: _array(out[keys.FORCES_UNCERTAINTY]),
            keys.FORCES_EPISTEMIC_COV: _array(out[keys.FORCES_EPISTEMIC_COV]),
            keys.FORCES_ALEATORIC_COV: _array(out[keys.FORCES_ALEATORIC_COV]),
            keys.UNCERTAINTY: _scalar(out[keys.UNCERTAINTY]),
            keys.UNCERTAINTY_MAX: _scalar(out[keys.UNCERTAINTY_MAX]),
        }
        for key in keys.RAW_PARAMETER_KEYS:  # evidential parameters, when the model gives them
            if key in out:
                results[key] = _array(out[key])
        if keys.FORCES_FEATURE_DISTANCE in out:
            results[keys.FORCES_FEATURE_DISTANCE] = _array(out[keys.FORCES_FEATURE_DISTANCE])
            for key in keys.PER_STRUCTURE_DISTANCE_KEYS:
                results[key] = _scalar(out[key])
        if "stress" in out and self.atoms.cell.rank == 3:
            results["stress"] = _voigt(_array(out["stress"]))
        if self.udd is not None:
            results.update(self._bias(out, results, use_bias))
        results["free_energy"] = results["energy"]
        self.results = results

    def _bias(self, out, results, use_bias: bool) -> dict:
        forces = results["forces"]
        if not use_bias:  # A == 0: exactly the unbiased forces
            zero = np.zeros_like(forces)
            return {"forces_unbiased": forces, "udd_bias_energy": 0.0, "udd_bias_forces": zero}
        energy_bias = udd_bias_energy(out[keys.UNCERTAINTY], len(self.atoms), self.udd)
        # -dE_bias/dR with R in the model's length unit (positions are passed as they are)
        raw = udd_bias_forces(energy_bias, out["positions"]) / self.length_units_to_A
        limited = _array(limit_bias_forces(raw, self.udd))
        e_bias = _scalar(energy_bias)
        return {
            "forces_unbiased": forces,
            "udd_bias_energy": e_bias,
            "udd_bias_forces": limited,
            "forces": forces + limited,
            "energy": results["energy"] + e_bias,
        }

    def todict(self) -> dict:
        d = super().todict()
        if self.udd is not None:
            d["udd"] = asdict(self.udd)
        return d


def _unit_factor(name: str, value) -> float:
    """``value`` as a float; ValueError unless it is a finite number > 0."""
    try:
        factor = float(value)
    except (TypeError, ValueError):
        factor = math.nan
    if isinstance(value, bool) or not (math.isfinite(factor) and factor > 0.0):
        unit = name.rsplit("_", 1)[-1]
        raise ValueError(
            f"invalid {name}={value!r}: the model's unit in {unit} must be a finite number > 0"
        )
    return factor


def _closest_pair(atoms) -> tuple[int, int, float]:
    from ase.neighborlist import neighbor_list

    i, j, d = neighbor_list("ijd", atoms, MIN_INTERATOMIC_DISTANCE * 2)
    if len(d) == 0:
        return 0, 0, float("inf")
    k = int(np.argmin(d))
    return int(i[k]), int(j[k]), float(d[k])


def _array(t) -> np.ndarray:
    return t.detach().cpu().double().numpy() if torch.is_tensor(t) else np.asarray(t, float)


def _scalar(t) -> float:
    return float(_array(t).reshape(-1)[0])


def _voigt(stress: np.ndarray) -> np.ndarray:
    s = stress.reshape(3, 3)
    return np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
