"""Epistemic / aleatoric formulas of SPEC §1 and per-structure reduction."""

import torch
from core_helpers import make_head

from eip_plugins.core import NIGParams, nig_uncertainty, structure_uncertainty, uncertainty_fields
from eip_plugins.core._e3nn import o3

IRREPS = o3.Irreps("6x0e + 6x1o")


def test_niw_epistemic_is_aleatoric_over_kappa():
    head = make_head("e2ip", IRREPS)
    feats = torch.randn(10, IRREPS.dim, dtype=torch.float64)
    p = head(feats, torch.zeros(10, 3, dtype=torch.float64))
    unc = head.uncertainty(p)
    torch.testing.assert_close(unc.aleatoric_cov, p.psi / (p.nu_w - 4.0)[:, None, None])
    torch.testing.assert_close(unc.epistemic_cov, unc.aleatoric_cov / p.kappa[:, None, None])
    trace = unc.epistemic_cov.diagonal(dim1=-2, dim2=-1).sum(-1)
    torch.testing.assert_close(unc.sigma, torch.sqrt(trace / 3))


def test_nig_uncertainty_formulas():
    nu = torch.tensor([[0.5, 2.0, 1.0]], dtype=torch.float64)
    alpha = torch.tensor([[1.5, 3.0, 2.0]], dtype=torch.float64)
    beta = torch.tensor([[0.2, 1.0, 0.4]], dtype=torch.float64)
    unc = nig_uncertainty(NIGParams(torch.zeros_like(nu), nu, alpha, beta))
    epi = beta / (nu * (alpha - 1))
    ale = beta / (alpha - 1)
    torch.testing.assert_close(unc.epistemic_cov.diagonal(dim1=-2, dim2=-1), epi)
    torch.testing.assert_close(unc.aleatoric_cov.diagonal(dim1=-2, dim2=-1), ale)
    torch.testing.assert_close(unc.sigma, torch.sqrt(epi.mean(-1)))
    assert (unc.epistemic_cov - torch.diag_embed(epi)).abs().max() == 0


def test_mve_sigma_and_zero_epistemic():
    head = make_head("mve", IRREPS)
    p = head(
        torch.randn(4, IRREPS.dim, dtype=torch.float64), torch.zeros(4, 3, dtype=torch.float64)
    )
    unc = head.uncertainty(p)
    assert unc.epistemic_cov.abs().max() == 0
    torch.testing.assert_close(unc.sigma, torch.sqrt(p.cov.diagonal(dim1=-2, dim2=-1).sum(-1) / 3))


def test_structure_mean_and_max():
    sigma = torch.tensor([1.0, 3.0, 2.0, 5.0, 4.0])
    batch = torch.tensor([0, 0, 1, 1, 1])
    mean, mx = structure_uncertainty(sigma, batch, 2)
    torch.testing.assert_close(mean, torch.tensor([2.0, 11.0 / 3.0]))
    torch.testing.assert_close(mx, torch.tensor([3.0, 5.0]))


def test_fields_have_documented_names_and_shapes():
    head = make_head("e2ip", IRREPS)
    p, distance_sq = head.forward_with_distance(
        torch.randn(5, IRREPS.dim, dtype=torch.float64), torch.zeros(5, 3, dtype=torch.float64)
    )
    out = head.fields(p, torch.tensor([0, 0, 1, 1, 1]), 2, distance_sq)
    assert out["forces_uncertainty"].shape == (5,)
    assert out["forces_epistemic_cov"].shape == (5, 3, 3)
    assert out["forces_aleatoric_cov"].shape == (5, 3, 3)
    assert out["uncertainty"].shape == (2,) and out["uncertainty_max"].shape == (2,)
    assert out["forces_feature_distance"].shape == (5,)
    assert out["feature_distance"].shape == (2,) and out["feature_distance_max"].shape == (2,)
    assert set(uncertainty_fields(head.uncertainty(p), torch.zeros(5, dtype=torch.long), 1)) <= set(
        out
    )
