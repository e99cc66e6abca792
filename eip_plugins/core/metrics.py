"""Uncertainty-quality metrics (SPEC §3), per atom and per structure.

Rank statistics come from torchmetrics (a dependency of both MACE and NequIP); distribution
statistics use the predictive distributions of :mod:`eip_plugins.core.predictive`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor
from torchmetrics.functional.classification import binary_auroc
from torchmetrics.functional.regression import spearman_corrcoef

DEFAULT_LEVELS = np.linspace(0.01, 0.99, 99)


def force_error(forces_pred: Tensor, forces_ref: Tensor) -> Tensor:
    """Per-atom Euclidean force error |F_pred - F_ref|, (N,), eV/A."""
    return torch.linalg.vector_norm(forces_pred - forces_ref, dim=-1)


def component_errors(forces_pred: Tensor, forces_ref: Tensor) -> dict[str, float]:
    """Per-component force MAE and RMSE, eV/A."""
    diff = (forces_pred - forces_ref).reshape(-1)
    return {"mae": diff.abs().mean().item(), "rmse": diff.pow(2).mean().sqrt().item()}


def spearman(uncertainty: Tensor, error: Tensor) -> float:
    """Spearman rank correlation between uncertainty and error (torchmetrics)."""
    return spearman_corrcoef(uncertainty.double().reshape(-1), error.double().reshape(-1)).item()


def roc_auc(uncertainty: Tensor, error: Tensor, top_fraction: float = 0.2) -> float:
    """ROC-AUC of uncertainty as a detector of the largest errors (Tan et al. 2023).

    Positives are the ``top_fraction`` largest errors (ties broken by order), the score is the
    uncertainty. 1.0 is a perfect ranking, 0.5 no information.
    """
    if not 0.0 < top_fraction < 1.0:
        raise ValueError(f"invalid top_fraction={top_fraction!r}: must lie in (0, 1)")
    error = error.reshape(-1)
    n_pos = max(1, int(math.ceil(top_fraction * error.numel())))
    target = torch.zeros_like(error, dtype=torch.long)
    target[torch.argsort(error, descending=True)[:n_pos]] = 1
    return binary_auroc(uncertainty.double().reshape(-1), target).item()


def calibration(levels: Tensor, grid: np.ndarray = DEFAULT_LEVELS) -> dict:
    """Calibration of predictive credible regions.

    Args:
        levels: (N,) credible level of each reference force (``credible_level``), in [0, 1].
        grid: confidence levels p in (0, 1).

    Returns:
        ``ce`` = mean_p |observed(p) - p|; ``area`` = integral over [0, 1] of |observed - p|
        (miscalibration area); ``expected`` and ``observed`` (the reliability-diagram curve).
    """
    lv = levels.detach().cpu().double().numpy().reshape(-1)
    grid = np.asarray(grid, dtype=float)
    observed = (lv[None, :] <= grid[:, None]).mean(axis=1)
    gap = np.abs(observed - grid)
    full_p = np.concatenate([[0.0], grid, [1.0]])
    full_gap = np.concatenate([[0.0], gap, [0.0]])
    area = float(np.sum(0.5 * (full_gap[1:] + full_gap[:-1]) * np.diff(full_p)))
    return {"ce": float(gap.mean()), "area": area, "expected": grid, "observed": observed}


def energy_score(distribution, forces_ref: Tensor, n_samples: int = 200, seed: int = 0) -> Tensor:
    """Energy score E|Y - y| - 1/2 E|Y - Y'| per atom, (N,), eV/A (lower is better).

    Monte Carlo with two independent sample sets of ``n_samples`` from a fixed seed.
    """
    gen = torch.Generator().manual_seed(seed)
    y1 = distribution.sample(n_samples, gen)
    y2 = distribution.sample(n_samples, gen)
    term1 = torch.linalg.vector_norm(y1 - forces_ref, dim=-1).mean(0)
    term2 = torch.linalg.vector_norm(y1 - y2, dim=-1).mean(0)
    return term1 - 0.5 * term2


def rotational_consistency_error(cov: Tensor, cov_rotated: Tensor, rotation: Tensor) -> float:
    """Relative Frobenius error |Sigma(R x) - R Sigma(x) R^T| / |Sigma(x)|, mean over atoms.

    Shapes: cov, cov_rotated (N, 3, 3); rotation (3, 3). 0 for an equivariant covariance.
    """
    expected = rotation @ cov @ rotation.T
    num = torch.linalg.matrix_norm(cov_rotated - expected)
    den = torch.linalg.matrix_norm(cov).clamp_min(torch.finfo(cov.dtype).tiny)
    return (num / den).mean().item()


def structure_mean(values: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
    """Mean of per-atom ``values`` (N,) within each structure, (G,)."""
    zeros = torch.zeros(num_graphs, dtype=values.dtype, device=values.device)
    total = zeros.index_add(0, batch, values)
    count = zeros.index_add(0, batch, torch.ones_like(values))
    return total / count.clamp_min(1.0)


def uncertainty_report(
    distribution,
    forces_pred: Tensor,
    forces_ref: Tensor,
    sigma: Tensor,
    batch: Tensor | None = None,
    num_graphs: int | None = None,
    es_samples: int = 200,
    seed: int = 0,
) -> dict:
    """All SPEC §3 metrics for one evaluation set.

    Args:
        distribution: predictive distribution (:func:`predictive_distribution`) over N atoms.
        forces_pred, forces_ref: (N, 3), eV/A.
        sigma: (N,) per-atom uncertainty, eV/A.
        batch: (N,) structure index, enables per-structure Spearman / ROC-AUC.

    Returns:
        A flat dict of floats plus ``reliability`` (expected, observed arrays).
    """
    error = force_error(forces_pred, forces_ref)
    levels = distribution.credible_level(forces_ref)
    cal = calibration(levels)
    report = {
        **{f"force_{k}": v for k, v in component_errors(forces_pred, forces_ref).items()},
        "spearman": spearman(sigma, error),
        "roc_auc": roc_auc(sigma, error),
        "nll": distribution.nll(forces_ref).mean().item(),
        "ce": cal["ce"],
        "miscalibration_area": cal["area"],
        "energy_score": energy_score(distribution, forces_ref, es_samples, seed).mean().item(),
        "reliability": {"expected": cal["expected"], "observed": cal["observed"]},
    }
    if batch is not None and num_graphs is not None and num_graphs >= 5:
        err_s = structure_mean(error, batch, num_graphs)
        sig_s = structure_mean(sigma, batch, num_graphs)
        report["spearman_structure"] = spearman(sig_s, err_s)
        report["roc_auc_structure"] = roc_auc(sig_s, err_s)
    return report
