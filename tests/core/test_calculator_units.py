"""The calculators' ``energy_units_to_eV`` / ``length_units_to_A`` (as ``MACECalculator`` and
``NequIPCalculator`` take them) and their refusal of keyword arguments they do not have, on the
shared base class (a toy calculator: harmonic pair energy and an e2ip head)."""

import math

import numpy as np
import pytest
import torch
from al_helpers import ToyUQCalculator
from ase import Atoms
from ase.units import kcal, mol
from calculator_checks import assert_converted

from eip_plugins.core import UDDConfig, limit_bias_forces, udd_bias_energy

ENERGY_UNIT = kcal / mol  # a model trained on kcal/mol labels: 0.0434 eV
LENGTH_UNIT = 0.5  # and a length unit of 0.5 A
FORCE_UNIT = ENERGY_UNIT / LENGTH_UNIT


def _start() -> Atoms:
    rng = np.random.default_rng(4)
    return Atoms("COH3", positions=rng.normal(scale=1.3, size=(5, 3)))


def _moved(atoms: Atoms, seed: int = 5) -> Atoms:
    moved = atoms.copy()
    moved.positions += np.random.default_rng(seed).normal(scale=0.08, size=moved.positions.shape)
    return moved


def _calculator(**kwargs) -> ToyUQCalculator:
    """A toy calculator whose reference geometry (the energy minimum) is :func:`_start`."""
    calc = ToyUQCalculator(**kwargs)
    atoms = _start()
    atoms.calc = calc
    atoms.get_forces()
    return calc


def _results(calc, atoms: Atoms) -> dict:
    atoms = atoms.copy()
    atoms.calc = calc
    atoms.get_forces()
    return dict(calc.results)


def test_every_output_is_converted_by_its_unit():
    atoms = _moved(_start())
    model_units = _results(_calculator(), atoms)
    ase_units = _results(
        _calculator(energy_units_to_eV=ENERGY_UNIT, length_units_to_A=LENGTH_UNIT), atoms
    )
    assert_converted(ase_units, model_units, ENERGY_UNIT, LENGTH_UNIT, rtol=1e-12)
    assert {"e2ip_psi", "forces_epistemic_cov", "uncertainty_max"} <= set(model_units)
    assert np.abs(model_units["forces"]).max() > 1e-3  # not at the minimum: the test can fail


def test_default_units_leave_the_results_unchanged():
    atoms = _moved(_start())
    default = _results(_calculator(), atoms)
    explicit = _results(_calculator(energy_units_to_eV=1, length_units_to_A=1.0), atoms)
    for key, value in default.items():
        np.testing.assert_array_equal(explicit[key], value, err_msg=key)


def test_udd_biases_with_the_converted_sigma_and_forces_in_eV_per_A():
    """The bias energy is the UDD energy of sigma in eV/A, and the bias force is -dE_bias/dR in
    eV/A, R in the model's length unit (the positions as given): central finite differences
    of the calculator's own bias energy, divided by the length unit, then limited."""
    udd = UDDConfig(A=0.5, B=0.02, C=1.0, D=0.5)
    units = dict(energy_units_to_eV=ENERGY_UNIT, length_units_to_A=LENGTH_UNIT)
    atoms = _moved(_start())
    biased = _calculator(udd=udd, **units)
    result = _results(biased, atoms)

    sigma = _results(_calculator(), atoms)["uncertainty"] * FORCE_UNIT
    expected_energy = udd_bias_energy(torch.tensor(sigma, dtype=torch.float64), len(atoms), udd)
    assert result["udd_bias_energy"] == pytest.approx(expected_energy.item(), rel=1e-10)
    assert abs(expected_energy.item()) > 1e-4  # the bias is on

    h = 1e-5
    raw = np.zeros((len(atoms), 3))
    for i in range(len(atoms)):
        for c in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[i, c] += h
            minus.positions[i, c] -= h
            e_plus = _results(biased, plus)["udd_bias_energy"]
            e_minus = _results(biased, minus)["udd_bias_energy"]
            raw[i, c] = -(e_plus - e_minus) / (2 * h) / LENGTH_UNIT
    expected_forces = limit_bias_forces(torch.tensor(raw), udd).numpy()
    scale = np.abs(expected_forces).max()
    assert scale > 1e-4
    np.testing.assert_allclose(
        result["udd_bias_forces"], expected_forces, rtol=1e-5, atol=1e-5 * scale
    )
    np.testing.assert_allclose(result["forces"], result["forces_unbiased"] + expected_forces,
                               rtol=1e-5, atol=1e-5 * scale)  # fmt: skip


@pytest.mark.parametrize("option", ["compile_mode", "torchscript_heads", "energy_units"])
def test_an_option_the_calculator_does_not_have_is_refused(option):
    """ASE would keep it as a 'parameter' and do nothing with it."""
    with pytest.raises(ValueError) as info:
        ToyUQCalculator(**{option: "x"})
    message = str(info.value)
    assert "\n" not in message
    assert f"ToyUQCalculator: unknown keyword argument(s) ['{option}']" in message
    assert "energy_units_to_eV" in message and "udd" in message  # names what it takes


def test_ase_calculator_arguments_are_accepted(tmp_path):
    calc = ToyUQCalculator(label="toy", directory=str(tmp_path))
    assert calc.label.endswith("toy")


@pytest.mark.parametrize("value", [0, -1.0, math.nan, math.inf, "kcal", None, True])
@pytest.mark.parametrize("name", ["energy_units_to_eV", "length_units_to_A"])
def test_a_unit_that_is_not_a_positive_number_is_refused(name, value):
    with pytest.raises(ValueError, match=rf"invalid {name}=.*must be a finite number > 0"):
        ToyUQCalculator(**{name: value})
