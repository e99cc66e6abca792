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
