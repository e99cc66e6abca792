"""Equivariant SPD matrices from the tangent space at the identity (SPEC §1b).

S = s I + T with s a scalar (l = 0) and T symmetric traceless (the Cartesian form of an l = 2, 2e
irrep). Psi = psi0 exp(S) is symmetric positive definite for any finite S and rotates as
Psi(R x) = R Psi(x) R^T because exp(R S R^T) = R exp(S) R^T. Where Psi is differentiated (training,
UDD) no eigendecomposition is used, so gradients stay finite at degenerate spectra (S proportional
to I, the state at initialisation); where nothing differentiates it (inference) one symmetric
eigendecomposition gives exp(S) and exp(-S) at a third of the cost, equal to rounding.
"""

import torch
from torch import Tensor

from ._e3nn import io


def symmetric_traceless_basis(dtype: torch.dtype = torch.float32) -> Tensor:
    """Change of basis from a 2e irrep to a symmetric traceless 3x3 matrix.

    Uses e3nn's ``CartesianTensor("ij=ji")`` (irreps 1x0e + 1x2e), so it follows whatever basis
    convention the installed e3nn uses for its irreps.

    Returns:
        (5, 3, 3) tensor Q with T_ij = sum_k t_k Q_kij for a 2e irrep t of shape (5,).
    """
    # e3nn builds its change of basis in the default dtype: float64 here, so that the basis is
    # exact to ~1e-15 (built in float32, e3nn 0.4.4's basis rotates with a 1e-8 error)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        ct = io.CartesianTensor("ij=ji")
        full = ct.to_cartesian(torch.eye(6, dtype=torch.float64))  # (6, 3, 3): rows 0e, then 2e
    finally:
        torch.set_default_dtype(previous)
    return full[1:].to(dtype)


def bound_log_scale(s: Tensor, t: Tensor, max_log_scale: float) -> tuple[Tensor, Tensor]:
    """Smoothly bound the tangent vector so that exp(S) is finite for any input.

    Args:
        s: (N,) isotropic log scale.
        t: (N, 5) l = 2 coefficients.
        max_log_scale: bound b; returns |s'| < b and |t'|_2 < b (|T'|_F < b with e3nn's basis
            normalisation), both unchanged to first order near 0.

    Returns:
        (s', t') with the shapes of the inputs. Radial squashing keeps t' parallel to t, so the
        bound preserves equivariance.
    """
    s = max_log_scale * torch.tanh(s / max_log_scale)
    r = torch.sqrt((t * t).sum(-1, keepdim=True) + 1e-12)
    x = r / max_log_scale
    # tanh(x)/x written to be finite and smooth at x -> 0.
    factor = torch.where(x < 1e-4, 1.0 - x * x / 3.0, torch.tanh(x) / x.clamp_min(1e-4))
    return s, t * factor


def spd_from_tangent(
    s: Tensor, traceless: Tensor, log_psi0: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Psi = psi0 exp(s I + T) with its inverse and log-determinant in closed form.

    Args:
        s: (N,) isotropic log scale.
        traceless: (N, 3, 3) symmetric traceless T.
        log_psi0: () log of the positive scale psi0 ((eV/A)^2).

    Returns:
        psi (N, 3, 3), psi_inv (N, 3, 3) = psi0^-1 exp(-S), log_det_psi (N,) = 3 log psi0 + tr S.
    """
    log_det = 3.0 * log_psi0 + 3.0 * s + traceless.diagonal(dim1=-2, dim2=-1).sum(-1)
    if torch.is_grad_enabled() and (s.requires_grad or traceless.requires_grad):
        n = traceless.shape[0]
        # exp(S) and exp(-S) in one batched call (half the per-call cost on small batches); its
        # gradient stays finite at degenerate spectra, where an eigendecomposition's does not
        eye = torch.eye(3, dtype=traceless.dtype, device=traceless.device)
        generator = s[:, None, None] * eye + traceless
        generator = 0.5 * (generator + generator.transpose(-1, -2))
        both = torch.linalg.matrix_exp(torch.cat([generator, -generator], dim=0))
        both = _symmetrise(both)
        psi0 = torch.exp(log_psi0)
        return psi0 * both[:n], both[n:] / psi0, log_det
    # nothing differentiates Psi (inference): T = V diag(l) V^T gives psi0^(+-1) exp(+-S) =
    # V diag(exp(+-(log psi0 + s + l))) V^T, one symmetric eigendecomposition (of T's lower
    # triangle) instead of two Pade exponentials
    eigenvalues, eigenvectors = torch.linalg.eigh(traceless)
    log_eigenvalues = eigenvalues + (s.unsqueeze(-1) + log_psi0)  # (N, 3) of log Psi
    exponentials = torch.exp(torch.stack([log_eigenvalues, -log_eigenvalues]))  # (2, N, 3)
    both = _symmetrise((eigenvectors * exponentials.unsqueeze(-2)) @ eigenvectors.transpose(-1, -2))
    return both[0], both[1], log_det


def _symmetrise(m: Tensor) -> Tensor:
    return 0.5 * (m + m.transpose(-1, -2))
