"""Assemble the per-atom and per-structure uncertainty fields an adapter returns."""

from typing import Dict

from torch import Tensor

from . import keys
from .params import ForceUncertainty
from .uncertainty import structure_uncertainty


def uncertainty_fields(unc: ForceUncertainty, batch: Tensor, num_graphs: int) -> Dict[str, Tensor]:
    """Output dictionary under the names of :mod:`eip_plugins.core.keys`.

    Args:
        unc: per-atom uncertainty (N atoms).
        batch: (N,) structure index of each atom.
        num_graphs: number of structures G.

    Returns:
        forces_uncertainty (N,), forces_epistemic_cov (N, 3, 3), forces_aleatoric_cov (N, 3, 3),
        uncertainty (G,), uncertainty_max (G,).
    """
    mean, maximum = structure_uncertainty(unc.sigma, batch, num_graphs)
    return {
        keys.FORCES_UNCERTAINTY: unc.sigma,
        keys.FORCES_EPISTEMIC_COV: unc.epistemic_cov,
        keys.FORCES_ALEATORIC_COV: unc.aleatoric_cov,
        keys.UNCERTAINTY: mean,
        keys.UNCERTAINTY_MAX: maximum,
    }
