"""The force prior (SPEC §1c, density-aware evidence bounded): 1 / Var_epistemic^2 =
1 / Var_raw^2 + 1 / V_z^2 with V_z = k^2 <F_c^2>_z, checked in closed form for both evidential
heads, at the far-out-of-distribution limit, under rotations, through a save, and without a prior
(bit-identical to the head before it existed)."""

import pytest
import torch
from core_helpers import fit_random_statistics, make_head

from eip_plugins.core._e3nn import o3
from eip_plugins.core.feature_density import DEFAULT_FORCE_PRIOR

IRREPS = o3.Irreps("6x0e + 6x1o")
MEAN_SQUARE_FORCE = torch.tensor([0.04, 0.3])  # <F_c^2>_z of two elements, (eV/A)^2


def _calibrated_head(kind, seed=11):
    head = make_head(kind, IRREPS, num_species=2, seed=seed)
    fit_random_statistics(head, num_species=2)
    head.variance_scale.set(0.6)
    return head.eval()


def _inputs(n=9, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = scale * torch.randn(n, IRREPS.dim, generator=g, dtype=torch.float64)
    forces = torch.randn(n, 3, generator=g, dtype=torch.float64)
    return feats, forces, torch.arange(n) % 2


@pytest.mark.parametrize("kind", ["e2ip", "eip"])
def test_epistemic_variance_combines_with_the_prior_in_quadrature(kind):
    """Per atom (e2ip: the matrix, along E[Sigma]; eip: each component)
    1 / Var^2 = 1 / Var_raw^2 + 1 / V_z^2 (Var_raw recalibrated by c, V_z absolute), aleatoric
    and predicted forces unchanged."""
    head = _calibrated_head(kind)
    feats, forces, species = _inputs(scale=1.5)
    raw = head.uncertainty(head(feats, forces, species))
    head.density.load_force_prior(MEAN_SQUARE_FORCE)
    params = head(feats, forces, species)
    unc = head.uncertainty(params)
    prior = DEFAULT_FORCE_PRIOR**2 * MEAN_SQUARE_FORCE.double()[species]  # (N,)
    torch.testing.assert_close(unc.aleatoric_cov, raw.aleatoric_cov, rtol=0, atol=0)
    torch.testing.assert_close(params[0], forces, rtol=0, atol=0)
    if kind == "eip":
        var_raw = raw.epistemic_cov.diagonal(dim1=-2, dim2=-1)
        var = unc.epistemic_cov.diagonal(dim1=-2, dim2=-1)
        torch.testing.assert_close(
            1.0 / var**2, 1.0 / var_raw**2 + 1.0 / prior[:, None] ** 2, rtol=1e-12, atol=0
        )
        return
    # e2ip: Var[mu] = E[Sigma] / kappa with kappa = hypot(kappa_raw, tr(E[Sigma]) / (3 V)):
    # along E[Sigma] the mean per-component variance combines in quadrature
    mean_ale = raw.aleatoric_cov.diagonal(dim1=-2, dim2=-1).mean(-1)
    kappa_raw = mean_ale / raw.epistemic_cov.diagonal(dim1=-2, dim2=-1).mean(-1)
    kappa = (kappa_raw**2 + (mean_ale / prior) ** 2).sqrt()
    torch.testing.assert_close(params.kappa, kappa, rtol=1e-12, atol=0)
    torch.testing.assert_close(
        unc.epistemic_cov, raw.aleatoric_cov / kappa[:, None, None], rtol=1e-12, atol=0
    )
    torch.testing.assert_close(
        1.0 / unc.sigma**4, 1.0 / raw.sigma**4 + 1.0 / prior**2, rtol=1e-10, atol=0
    )


@pytest.mark.parametrize("kind", ["e2ip", "eip"])
def test_far_from_the_training_atoms_sigma_levels_off_at_the_prior(kind):
    """Without the prior sigma grows without end (up to the caps of the evidence factor); with
    it sigma^2 stays below V_z and tends to it, whatever the recalibration scale c (V_z is
    absolute), smoothly (finite gradients of sigma with respect to the features)."""
    head = _calibrated_head(kind)
    mean_square_force = 0.01 * MEAN_SQUARE_FORCE  # far below the raw variance at r ~ 3000
    prior = DEFAULT_FORCE_PRIOR**2 * mean_square_force.double()
    feats, forces, species = _inputs(scale=3000.0)
    unbounded = head.uncertainty(head(feats, forces, species)).sigma
    assert bool((unbounded**2 > 10.0 * prior[species]).all())
    head.density.load_force_prior(mean_square_force)
    for c in (0.6, 6.0):
        head.variance_scale.set(c)
        sigma = head.uncertainty(head(feats, forces, species)).sigma
        ratio = sigma**2 / prior[species]
        assert bool((ratio <= 1.0 + 1e-12).all()) and bool((ratio > 0.9).all())
    for scale in (0.1, 1.0, 30.0):
        feats, forces, species = _inputs(scale=scale)
        sigma = head.uncertainty(head(feats, forces, species)).sigma
        assert bool((sigma**2 <= prior[species] * (1.0 + 1e-12)).all())
    feats.requires_grad_(True)
    sigma = head.uncertainty(head(feats, forces, species)).sigma
    (grad,) = torch.autograd.grad(sigma.sum(), feats)
    assert bool(torch.isfinite(grad).all()) and bool((grad != 0).any())


def test_calibrated_covariance_with_the_prior_still_rotates():
    head = _calibrated_head("e2ip")
    head.density.load_force_prior(MEAN_SQUARE_FORCE)
    feats, forces, species = _inputs(scale=2.0)
    unc = head.uncertainty(head(feats, forces, species))
    for _ in range(10):
        rot = o3.rand_matrix(dtype=torch.float64)
        feats_r = feats @ IRREPS.D_from_matrix(rot).T
        unc_r = head.uncertainty(head(feats_r, forces @ rot.T, species))
        for cov, cov_r in (
            (unc.epistemic_cov, unc_r.epistemic_cov),
            (unc.aleatoric_cov, unc_r.aleatoric_cov),
        ):
            expected = rot @ cov @ rot.T
            assert ((cov_r - expected).abs().max() / expected.abs().max()).item() < 1e-7


@pytest.mark.parametrize("kind", ["e2ip", "eip"])
def test_an_element_without_a_prior_and_a_head_without_one_are_unchanged(kind):
    head = _calibrated_head(kind)
    feats, forces, species = _inputs()
    raw = head(feats, forces, species)
    head.density.load_force_prior(torch.tensor([0.0, 0.3]))  # element 0: no training atoms
    params = head(feats, forces, species)
    evidence = params.kappa if kind == "e2ip" else params.nu
    raw_evidence = raw.kappa if kind == "e2ip" else raw.nu
    assert torch.equal(evidence[species == 0], raw_evidence[species == 0])
    assert bool((evidence[species == 1] > raw_evidence[species == 1]).all())
    head.density.reset()
    assert not head.density.has_force_prior


def test_the_prior_survives_a_state_dict_and_an_older_one_loads_without_it():
    head = _calibrated_head("e2ip")
    head.density.load_force_prior(MEAN_SQUARE_FORCE)
    state = head.state_dict()
    copy = make_head("e2ip", IRREPS, num_species=2, seed=3)
    copy.load_state_dict(state)
    torch.testing.assert_close(copy.density.prior_variance, head.density.prior_variance)
    feats, forces, species = _inputs()
    for got, expected in zip(
        copy(feats, forces, species), head(feats, forces, species), strict=True
    ):
        assert torch.equal(got, expected)
    older = {k: v for k, v in state.items() if k != "density.prior_variance"}
    copy.load_state_dict(older, strict=True)
    assert not copy.density.has_force_prior


def test_a_bad_prior_is_one_clear_error():
    head = _calibrated_head("e2ip")
    with pytest.raises(ValueError, match="invalid force prior multiple=0.0"):
        head.density.load_force_prior(MEAN_SQUARE_FORCE, 0.0)
    with pytest.raises(ValueError, match="a force prior of 3 species for a density of 2"):
        head.density.load_force_prior(torch.tensor([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="invalid mean squared forces"):
        head.density.load_force_prior(torch.tensor([0.1, float("nan")]))
