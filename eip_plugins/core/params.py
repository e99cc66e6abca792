"""Typed containers for the per-atom outputs of the evidential heads.

Every tensor is per atom: N atoms, Cartesian components x, y, z. Forces in eV/A, variances and
covariances in (eV/A)^2. The containers are ``NamedTuple`` so that TorchScript (MACE) and
``torch.export`` (NequIP AOTInductor) both accept them.
"""

from typing import NamedTuple

from torch import Tensor


class NIGParams(NamedTuple):
    """Normal-Inverse-Gamma parameters of the eIP head, one set per atom and component.

    Shapes: all (N, 3). gamma = predicted force (eV/A); nu > 0; alpha > 1; beta > 0 ((eV/A)^2).
    """

    gamma: Tensor
    nu: Tensor
    alpha: Tensor
    beta: Tensor


class NIWParams(NamedTuple):
    """Normal-Inverse-Wishart parameters of the e2IP head, one set per atom.

    Shapes: mu0 (N, 3) predicted force (eV/A); kappa (N,) > 0; nu_w (N,) > 4;
    psi (N, 3, 3) SPD scale matrix ((eV/A)^2), psi_inv (N, 3, 3) its inverse, log_det_psi (N,).
    """

    mu0: Tensor
    kappa: Tensor
    nu_w: Tensor
    psi: Tensor
    psi_inv: Tensor
    log_det_psi: Tensor


class GaussianParams(NamedTuple):
    """Heteroscedastic Gaussian (MVE) parameters, one set per atom.

    Shapes: mean (N, 3) predicted force (eV/A); cov (N, 3, 3) SPD ((eV/A)^2); cov_inv (N, 3, 3);
    log_det_cov (N,).
    """

    mean: Tensor
    cov: Tensor
    cov_inv: Tensor
    log_det_cov: Tensor


class ForceUncertainty(NamedTuple):
    """Per-atom force uncertainty.

    Shapes: epistemic_cov (N, 3, 3) and aleatoric_cov (N, 3, 3) in (eV/A)^2 (diagonal for eIP,
    epistemic is zero for MVE, which has no epistemic/aleatoric split);
    sigma (N,) the per-atom scalar uncertainty in eV/A.
    """

    epistemic_cov: Tensor
    aleatoric_cov: Tensor
    sigma: Tensor
