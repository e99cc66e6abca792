"""Checks shared by the MACE and NequIP suites on ASE calculators' results."""

import numpy as np


def calculator_results(calc, atoms) -> dict:
    """``calc.results`` after a force call on a copy of ``atoms``."""
    atoms = atoms.copy()
    atoms.calc = calc
    atoms.get_forces()
    return dict(calc.results)


def assert_same_results(calc, reference, frames, rtol: float) -> None:
    """``calc`` gives ``reference``'s results on every frame: the same keys, every value within
    ``rtol`` of the reference's (and ``rtol`` times its largest entry)."""
    for atoms in frames:
        expected, got = calculator_results(reference, atoms), calculator_results(calc, atoms)
        assert set(got) == set(expected)
        for key in expected:
            scale = np.abs(expected[key]).max()
            np.testing.assert_allclose(
                got[key], expected[key], rtol=rtol, atol=rtol * scale, err_msg=key
            )


#: the powers of (energy unit, length unit) that each calculator result carries: what
#: ``energy_units_to_eV`` / ``length_units_to_A`` convert it by, written out here, apart from the
#: calculators' own table
RESULT_UNITS = {
    "energy": (1, 0),
    "free_energy": (1, 0),
    "stress": (1, -3),
    "forces": (1, -1),
    "forces_uncertainty": (1, -1),
    "uncertainty": (1, -1),
    "uncertainty_max": (1, -1),
    "forces_epistemic_cov": (2, -2),
    "forces_aleatoric_cov": (2, -2),
    "eip_beta": (2, -2),
    "e2ip_psi": (2, -2),
    "mve_cov": (2, -2),
    "eip_nu": (0, 0),
    "eip_alpha": (0, 0),
    "e2ip_kappa": (0, 0),
    "e2ip_nu_w": (0, 0),
    "forces_feature_distance": (0, 0),
    "feature_distance": (0, 0),
    "feature_distance_max": (0, 0),
}


def assert_converted(converted: dict, model_units: dict, energy_unit: float, length_unit: float,
                     rtol: float) -> None:  # fmt: skip
    """The results of a calculator given ``energy_units_to_eV=energy_unit`` and
    ``length_units_to_A=length_unit`` are those of the same calculator without them, each times
    its :data:`RESULT_UNITS` factor (to ``rtol``); both have the same results, all listed."""
    assert set(converted) == set(model_units)
    assert set(model_units) <= set(RESULT_UNITS), set(model_units) - set(RESULT_UNITS)
    for key, value in model_units.items():
        energy_power, length_power = RESULT_UNITS[key]
        factor = energy_unit**energy_power * length_unit**length_power
        np.testing.assert_allclose(converted[key], value * factor, rtol=rtol, err_msg=key)
