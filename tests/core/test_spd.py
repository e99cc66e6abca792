"""Psi = psi0 exp(sI + T) is SPD for any input, including huge and exactly isotropic ones."""

import pytest
import torch
from core_helpers import make_head

from eip_plugins.core._e3nn import o3
from eip_plugins.core.spd import spd_from_tangent, symmetric_traceless_basis

IRREPS = o3.Irreps("6x0e + 6x1o")


@pytest.mark.parametrize("differentiated", [True, False], ids=["training", "inference"])
@pytest.mark.parametrize("kind", ["e2ip", "mve"])
def test_spd_for_10k_random_inputs(kind, differentiated):
    torch.manual_seed(0)
    head = make_head(kind, IRREPS)
    n = 10_000
    scales = torch.logspace(-3, 3, n, dtype=torch.float64)[:, None]
    feats = torch.randn(n, IRREPS.dim, dtype=torch.float64) * scales
    feats[:500, 6:] = 0.0  # vector channels zero: T = 0 exactly (isotropic)
    with torch.set_grad_enabled(differentiated):  # Pade exponential / eigendecomposition
        params = head(feats, torch.zeros(n, 3, dtype=torch.float64))
    unc = head.uncertainty(params)
    for cov in (unc.aleatoric_cov,) + ((unc.epistemic_cov,) if kind == "e2ip" else ()):
        assert torch.isfinite(cov).all()
        torch.testing.assert_close(cov, cov.transpose(-1, -2), rtol=0, atol=0)
        assert (torch.linalg.eigvalsh(cov) > 0).all()
    # T = 0 gives an isotropic covariance.
    iso = unc.aleatoric_cov[:500]
    diag = iso.diagonal(dim1=-2, dim2=-1)
    torch.testing.assert_close(iso, torch.diag_embed(diag), rtol=0, atol=1e-12 * diag.max().item())
    torch.testing.assert_close(diag, diag[:, :1].expand(-1, 3), rtol=1e-10, atol=0)


def test_closed_form_inverse_and_log_det():
    torch.manual_seed(1)
    q = symmetric_traceless_basis(torch.float64)
    t = torch.einsum("nk,kij->nij", torch.randn(50, 5, dtype=torch.float64), q)
    torch.testing.assert_close(t.diagonal(dim1=-2, dim2=-1).sum(-1), torch.zeros(50, dtype=t.dtype))
    s = torch.randn(50, dtype=torch.float64)
    log_psi0 = torch.tensor(0.3, dtype=torch.float64)
    psi, psi_inv, log_det = spd_from_tangent(s, t, log_psi0)
    eye = torch.eye(3, dtype=torch.float64).expand(50, 3, 3)
    torch.testing.assert_close(psi @ psi_inv, eye, rtol=0, atol=1e-10)
    torch.testing.assert_close(log_det, torch.logdet(psi), rtol=1e-10, atol=1e-10)


def test_basis_is_symmetric_traceless_and_rotates_as_2e_to_float64_precision():
    """sum_k (D(R) t)_k Q_k == R (sum_k t_k Q_k) R^T, with D(R) the 2e Wigner matrix, built under
    a float32 default dtype (as in MACE's float32 training) yet exact to ~1e-14."""
    from eip_plugins.core._e3nn import o3

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        q = symmetric_traceless_basis(torch.float64)
    finally:
        torch.set_default_dtype(previous)
    assert q.dtype == torch.float64 and q.shape == (5, 3, 3)
    torch.testing.assert_close(q, q.transpose(-1, -2), rtol=0, atol=1e-14)
    assert q.diagonal(dim1=-2, dim2=-1).sum(-1).abs().max() < 1e-15
    torch.manual_seed(0)
    torch.set_default_dtype(torch.float64)  # e3nn's Wigner D in float64
    try:
        for _ in range(5):
            rot = o3.rand_matrix(dtype=torch.float64)
            d = o3.Irrep("2e").D_from_matrix(rot)
            t = torch.randn(5, dtype=torch.float64)
            lhs = torch.einsum("k,kij->ij", d @ t, q)
            rhs = rot @ torch.einsum("k,kij->ij", t, q) @ rot.T
            torch.testing.assert_close(lhs, rhs, rtol=0, atol=1e-12)
    finally:
        torch.set_default_dtype(previous)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_inference_exponential_is_as_accurate_as_the_differentiable_one(dtype):
    """Without a graph Psi comes from one eigendecomposition, with one from matrix_exp. Against
    a float64 matrix_exp reference both are accurate to rounding, from isotropic S (a degenerate
    spectrum) to S at the bound of bound_log_scale (|s|, |T|_F up to 10: entries of exp(+-S)
    from e^-18 to e^18), errors relative to each matrix's largest entry."""
    torch.manual_seed(2)
    n = 400
    q = symmetric_traceless_basis(torch.float64)
    coefficients = torch.randn(n, 5, dtype=torch.float64)
    coefficients = coefficients / coefficients.norm(dim=-1, keepdim=True)
    coefficients = coefficients * torch.linspace(0.0, 10.0, n, dtype=torch.float64)[:, None]
    coefficients[:40] = 0.0  # T = 0: three equal eigenvalues
    coefficients[40:80, 1:] = 0.0  # one 2e component: two equal eigenvalues
    t = torch.einsum("nk,kij->nij", coefficients, q)
    s = torch.linspace(-10.0, 10.0, n, dtype=torch.float64)
    log_psi0 = torch.tensor(-1.7, dtype=torch.float64)
    reference = [x.detach() for x in spd_from_tangent(s, t.requires_grad_(True), log_psi0)]
    t, s, log_psi0 = t.detach().to(dtype), s.to(dtype), log_psi0.to(dtype)
    with torch.no_grad():
        inference = spd_from_tangent(s, t, log_psi0)
    differentiable = spd_from_tangent(s, t.clone().requires_grad_(True), log_psi0)
    assert differentiable[0].requires_grad and not inference[0].requires_grad
    # float32 matrix_exp is off by 5e-5 at S = -10 I (its squaring steps); the eigh path by 7e-6
    tolerance = 1e-12 if dtype == torch.float64 else 1e-4
    for path in (inference, differentiable):
        for got, expected in zip(path[:2], reference[:2], strict=True):  # psi, psi_inv
            error = (got.detach().double() - expected).abs().flatten(1).amax(1)
            assert (error <= tolerance * expected.abs().flatten(1).amax(1)).all()
        torch.testing.assert_close(path[2].detach().double(), reference[2], rtol=tolerance, atol=0)
    psi = inference[0]
    torch.testing.assert_close(psi, psi.transpose(-1, -2), rtol=0, atol=0)
    assert (torch.linalg.eigvalsh(psi.double()) > 0).all()
