"""Epistemic / aleatoric covariances and scalar uncertainties from head parameters (SPEC §1)."""

import torch
from torch import Tensor

from .params import ForceUncertainty, GaussianParams, NIGParams, NIWParams


def nig_uncertainty(params: NIGParams) -> ForceUncertainty:
    """eIP: epistemic beta / (nu (alpha - 1)), aleatoric beta / (alpha - 1), per component.

    Covariances are diagonal (N, 3, 3); sigma_i = sqrt(mean_c epistemic variance), (N,), eV/A.
    """
    aleatoric = params.beta / (params.alpha - 1.0)
    epistemic = aleatoric / params.nu
    sigma = torch.sqrt(epistemic.mean(-1))
    return ForceUncertainty(torch.diag_embed(epistemic), torch.diag_embed(aleatoric), sigma)


def niw_uncertainty(params: NIWParams) -> ForceUncertainty:
    """e2IP: aleatoric E[Sigma] = Psi / (nu_w - d - 1), epistemic Var[mu] = E[Sigma] / kappa.

    sigma_i = sqrt(tr(Var[mu]) / 3), rotation invariant, (N,), eV/A.
    """
    aleatoric = params.psi / (params.nu_w - 4.0)[:, None, None]
    epistemic = aleatoric / params.kappa[:, None, None]
    sigma = torch.sqrt(epistemic.diagonal(dim1=-2, dim2=-1).sum(-1) / 3.0)
    return ForceUncertainty(epistemic, aleatoric, sigma)


def gaussian_uncertainty(params: GaussianParams) -> ForceUncertainty:
    """MVE: the predicted covariance is aleatoric; there is no epistemic part (zeros).

    sigma_i = sqrt(tr(cov) / 3), (N,), eV/A: the baseline's only uncertainty signal.
    """
    sigma = torch.sqrt(params.cov.diagonal(dim1=-2, dim2=-1).sum(-1) / 3.0)
    return ForceUncertainty(torch.zeros_like(params.cov), params.cov, sigma)


def structure_uncertainty(sigma: Tensor, batch: Tensor, num_graphs: int) -> tuple[Tensor, Tensor]:
    """Per-structure mean and max of the per-atom sigma_i.

    Args:
        sigma: (N,) per-atom uncertainty, eV/A.
        batch: (N,) int64 index of the structure of each atom.
        num_graphs: G.

    Returns:
        (mean (G,), max (G,)), eV/A.
    """
    zeros = torch.zeros(num_graphs, dtype=sigma.dtype, device=sigma.device)
    total = zeros.index_add(0, batch, sigma)
    count = zeros.index_add(0, batch, torch.ones_like(sigma))
    mean = total / count.clamp_min(1.0)
    maximum = zeros.scatter_reduce(0, batch, sigma, reduce="amax", include_self=False)
    return mean, maximum
