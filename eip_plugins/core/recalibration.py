"""Recalibration: one positive scale c of the predictive distribution (SPEC §1c).

c multiplies the scale of every head's predictive law, and with it both covariances:

- e2ip: Psi -> c Psi (Student-t scale matrix, E[Sigma] and Var[mu] all times c);
- eip: beta -> c beta (per-component Student-t scale^2, both variances times c);
- mve: Sigma -> c Sigma.

c = 1 leaves every output bit-identical. :func:`fit_variance_scale` chooses c on held-out data by
minimising the mean NLL of the reference forces (a proper scoring rule, the default) or the
calibration error CE.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from torch import Tensor, nn

from .metrics import calibration
from .params import GaussianParams, NIGParams, NIWParams
from .predictive import predictive_distribution

OBJECTIVES = ("nll", "ce")
_LOG_C_BOUNDS = (-12.0, 12.0)  # c in [6e-6, 1.6e5]


class VarianceScale(nn.Module):
    """The recalibration scale c as a buffer ``scale`` () of the model (1 = not recalibrated)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("scale", torch.ones(()))

    @torch.no_grad()
    def set(self, c: float) -> None:
        if not (math.isfinite(c) and c > 0.0):
            raise ValueError(f"invalid variance scale c={c!r}: must be a finite number > 0")
        self.scale.fill_(float(c))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a model saved before recalibration existed: c = 1
        state_dict.setdefault(prefix + "scale", torch.ones_like(self.scale))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def scale_niw(params: NIWParams, c: Tensor) -> NIWParams:
    """Psi -> c Psi with the closed-form inverse and log-determinant."""
    c = c.to(params.psi.dtype)
    return NIWParams(
        params.mu0,
        params.kappa,
        params.nu_w,
        params.psi * c,
        params.psi_inv / c,
        params.log_det_psi + 3.0 * torch.log(c),
    )


def scale_nig(params: NIGParams, c: Tensor) -> NIGParams:
    """beta -> c beta."""
    return NIGParams(params.gamma, params.nu, params.alpha, params.beta * c.to(params.beta.dtype))


def scale_gaussian(params: GaussianParams, c: Tensor) -> GaussianParams:
    """Sigma -> c Sigma with the closed-form inverse and log-determinant."""
    c = c.to(params.cov.dtype)
    return GaussianParams(
        params.mean, params.cov * c, params.cov_inv / c, params.log_det_cov + 3.0 * torch.log(c)
    )


def scale_params(params, c: float):
    """Any head's parameters with the predictive scale multiplied by ``c``."""
    ct = torch.tensor(float(c), dtype=torch.float64)
    if isinstance(params, NIWParams):
        return scale_niw(params, ct)
    if isinstance(params, NIGParams):
        return scale_nig(params, ct)
    if isinstance(params, GaussianParams):
        return scale_gaussian(params, ct)
    raise TypeError(f"no variance scale for parameters of type {type(params).__name__}")


def predictive_nll(params, forces_ref: Tensor) -> float:
    return float(predictive_distribution(params).nll(forces_ref).mean())


def predictive_ce(params, forces_ref: Tensor) -> float:
    return calibration(predictive_distribution(params).credible_level(forces_ref))["ce"]


def fit_variance_scale(params, forces_ref: Tensor, objective: str = "nll") -> float:
    """The scale c > 0 that minimises the mean NLL (or CE) of ``forces_ref`` (N, 3) under the
    head's predictive distribution with its scale multiplied by c.

    Args:
        params: head parameters (over N atoms) computed with c = 1, float64 preferred.
        forces_ref: (N, 3) reference forces, eV/A.
        objective: ``"nll"`` (bounded Brent search over log c) or ``"ce"`` (grid over log c,
            refined; CE is piecewise constant in c).
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"invalid objective={objective!r}: one of {OBJECTIVES}")
    if forces_ref.shape[0] < 1:
        raise ValueError("recalibration needs at least one atom with reference forces")
    params = type(params)(*(t.detach().double() for t in params))
    forces_ref = forces_ref.detach().double()
    if objective == "nll":
        result = minimize_scalar(
            lambda log_c: predictive_nll(scale_params(params, math.exp(log_c)), forces_ref),
            bounds=_LOG_C_BOUNDS,
            method="bounded",
            options={"xatol": 1e-4},
        )
        return float(math.exp(result.x))

    def ce(log_c: float) -> float:
        return predictive_ce(scale_params(params, math.exp(log_c)), forces_ref)

    grid = np.linspace(-8.0, 8.0, 33)  # steps of 0.5 in log c
    values = [ce(x) for x in grid]
    best = float(grid[int(np.argmin(values))])
    fine = np.linspace(best - 0.5, best + 0.5, 21)
    values = [ce(x) for x in fine]
    return float(math.exp(fine[int(np.argmin(values))]))
