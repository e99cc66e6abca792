"""Feature statistics, the density-aware evidence and recalibration (SPEC §1c).

The statistics are checked against NumPy on the same features, the distance and the covariance
against independent computations and random rotations, and a head without statistics against
the head as it was before the density existed.
"""

import math

import numpy as np
import pytest
import torch
from core_helpers import fit_random_statistics, make_head

from eip_plugins.core import FeatureStatistics, InvariantFeatures, fit_variance_scale
from eip_plugins.core._e3nn import o3
from eip_plugins.core.covariance_head import positive
from eip_plugins.core.predictive import predictive_distribution
from eip_plugins.core.recalibration import predictive_ce, scale_params

IRREPS = o3.Irreps("4x0e + 3x1o + 2x1e + 2x2e")


def test_streamed_statistics_equal_numpy():
    rng = np.random.default_rng(0)
    dim, counts = 5, (300, 7, 1)
    feats = [
        rng.normal(3.0 + z, 0.5 + z, size=(n, dim)) @ rng.normal(size=(dim, dim))
        for z, n in enumerate(counts)
    ]
    species = np.concatenate([np.full(n, z) for z, n in enumerate(counts)])
    x = np.concatenate(feats)
    order = rng.permutation(len(x))  # species interleaved, uneven batches
    stats = FeatureStatistics(num_species=3, dim=dim)
    for batch in np.array_split(order, [5, 6, 60, 61, 200]):
        stats.update(torch.as_tensor(x[batch]), torch.as_tensor(species[batch]))
    cov = stats.covariance()
    for z, f in enumerate(feats):
        assert stats.count[z] == len(f)
        np.testing.assert_allclose(stats.mean[z].numpy(), f.mean(0), rtol=0, atol=1e-10)
        if len(f) >= 2:
            np.testing.assert_allclose(cov[z].numpy(), np.cov(f, rowvar=False), atol=1e-10)
    n, mean, pooled = stats.pooled()
    np.testing.assert_allclose(mean.numpy(), x.mean(0), atol=1e-10)
    np.testing.assert_allclose(pooled.numpy(), np.cov(x, rowvar=False), atol=1e-10)


def test_normalised_distance_against_an_independent_computation():
    rng = np.random.default_rng(1)
    dim = 6
    x = rng.normal(size=(400, dim)) @ rng.normal(size=(dim, dim)) + 2.0
    species = np.arange(400) % 2
    species[:3] = 2  # a third species with 3 atoms (< D): strongly shrunk
    stats = FeatureStatistics(3, dim)
    stats.update(torch.as_tensor(x), torch.as_tensor(species))
    fitted = stats.finalize(shrinkage=0.1)
    head = make_head("e2ip", "6x0e + 1x1o", num_species=3)
    density = head.density.double()
    density.dim = dim  # test the density module alone on D = 6 raw descriptors
    density.mean, density.whitening = fitted.mean.clone(), fitted.whitening.clone()
    r2 = density(torch.as_tensor(x), torch.as_tensor(species)).numpy()
    for z in range(3):
        xz = x[species == z]
        c = np.cov(xz, rowvar=False)
        eps = max(0.1, dim / (len(xz) + dim))
        c = (1 - eps) * c + eps * np.diag(np.diag(c)) + 1e-6 * np.diag(c).mean() * np.eye(dim)
        diff = xz - xz.mean(0)
        d2 = np.einsum("ni,ij,nj->n", diff, np.linalg.inv(c), diff)
        np.testing.assert_allclose(r2[species == z], d2 / d2.mean(), rtol=1e-8)
        assert abs(r2[species == z].mean() - 1.0) < 1e-10  # RMS 1 over the training atoms
        assert np.all(np.linalg.eigvalsh(fitted.covariance[z].numpy()) > 0)


def test_species_without_atoms_use_the_pooled_statistics():
    stats = FeatureStatistics(3, 2)
    stats.update(torch.randn(50, 2, dtype=torch.float64), torch.zeros(50, dtype=torch.long))
    stats.update(torch.randn(40, 2, dtype=torch.float64) + 5, torch.ones(40, dtype=torch.long))
    fitted = stats.finalize()
    _, mean_all, _ = stats.pooled()
    torch.testing.assert_close(fitted.mean[2], mean_all)
    assert torch.isfinite(fitted.whitening).all()
    with pytest.raises(ValueError, match="at least 2 atoms"):
        FeatureStatistics(1, 2).finalize()
    with pytest.raises(ValueError, match="species index out of range"):
        stats.update(torch.zeros(1, 2), torch.tensor([3]))
    with pytest.raises(ValueError, match="non-finite"):
        stats.update(torch.full((1, 2), float("nan")), torch.tensor([0]))


def test_invariant_descriptors_and_distance_are_rotation_invariant():
    torch.manual_seed(0)
    invariants = InvariantFeatures(IRREPS)
    assert invariants.dim == 4 + 3 + 2 + 2
    head = make_head("e2ip", IRREPS, num_species=2)
    fit_random_statistics(head, num_species=2)
    feats = torch.randn(9, IRREPS.dim, dtype=torch.float64)
    species = torch.tensor([0, 1] * 4 + [1])
    h = invariants.double()(feats)
    r2 = head.feature_distance_sq(feats, species)
    assert (r2 > 0).all()
    for _ in range(20):
        d = IRREPS.D_from_matrix(o3.rand_matrix(dtype=torch.float64))
        torch.testing.assert_close(invariants(feats @ d.T), h, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(
            head.feature_distance_sq(feats @ d.T, species), r2, rtol=1e-9, atol=0
        )
    # an inversion too (1e, 2e channels are even, 1o odd: norms do not change)
    d = IRREPS.D_from_matrix(-torch.eye(3, dtype=torch.float64))
    torch.testing.assert_close(invariants(feats @ d.T), h, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["e2ip", "mve"])
def test_calibrated_covariance_still_rotates(kind):
    torch.manual_seed(2)
    head = make_head(kind, IRREPS, num_species=2)
    fit_random_statistics(head, num_species=2)
    head.variance_scale.set(0.3)
    feats = torch.randn(7, IRREPS.dim, dtype=torch.float64)
    forces = torch.randn(7, 3, dtype=torch.float64)
    species = torch.tensor([0, 1, 0, 1, 1, 0, 0])
    unc = head.uncertainty(head(feats, forces, species))
    for _ in range(20):
        rot = o3.rand_matrix(dtype=torch.float64)
        unc_r = head.uncertainty(head(feats @ IRREPS.D_from_matrix(rot).T, forces @ rot.T, species))
        pairs = [(unc.aleatoric_cov, unc_r.aleatoric_cov)]
        if kind == "e2ip":  # mve has no epistemic part
            pairs.append((unc.epistemic_cov, unc_r.epistemic_cov))
        for cov, cov_r in pairs:
            expected = rot @ cov @ rot.T
            # ~1e-10 under e3nn 0.4.4; under e3nn 0.6 the head without statistics is ~1e-8 too
            assert ((cov_r - expected).abs().max() / expected.abs().max()).item() < 1e-7


@pytest.mark.parametrize("kind", ["e2ip", "eip", "mve"])
def test_without_statistics_the_head_is_exactly_the_trained_one(kind):
    """No statistics and c = 1 (every model before calibration): bit-identical parameters to
    the head's own networks alone."""
    torch.manual_seed(3)
    head = make_head(kind, "6x0e + 6x1o", num_species=3)
    feats = torch.randn(11, 24, dtype=torch.float64)
    forces = torch.randn(11, 3, dtype=torch.float64)
    params, r2 = head.forward_with_distance(feats, forces, torch.arange(11) % 3)
    assert torch.equal(r2, torch.zeros(11, dtype=torch.float64))
    if kind == "eip":
        n = feats.shape[0]
        raw = head.mlp(feats[:, head.vector_index].reshape(n, -1, 3).transpose(1, 2))
        assert torch.equal(params.nu, torch.nn.functional.softplus(raw[..., 2]) + head.nu_floor)
        assert torch.equal(params.beta, torch.nn.functional.softplus(raw[..., 1]) + head.beta_floor)
        return
    scalars, psi, psi_inv, log_det = head.covariance(feats)
    if kind == "e2ip":
        assert torch.equal(params.kappa, positive(scalars[:, 0], head.kappa_floor))
        assert torch.equal(params.nu_w, positive(scalars[:, 1], head.nu_w_floor))
    for got, expected in zip(params[-3:], (psi, psi_inv, log_det), strict=True):
        assert torch.equal(got, expected)


def test_density_aware_evidence_closed_form():
    torch.manual_seed(4)
    head = make_head("e2ip", "6x0e + 6x1o", num_species=2)
    feats = torch.randn(8, 24, dtype=torch.float64)
    forces = torch.zeros(8, 3, dtype=torch.float64)
    species = torch.arange(8) % 2
    kappa0 = head(feats, forces, species).kappa
    epi0 = head.uncertainty(head(feats, forces, species)).epistemic_cov
    fit_random_statistics(head, num_species=2)
    for a, p in ((1.0, 2.0), (0.5, 1.0), (0.0, 2.0)):
        head.density.set_evidence_form(a, p)
        r2 = head.feature_distance_sq(feats, species)
        params = head(feats, forces, species)
        torch.testing.assert_close(params.kappa, kappa0 / (1 + a * r2**p), rtol=1e-12, atol=0)
        # aleatoric E[Sigma] unchanged, epistemic Var[mu] times (1 + a r^(2p))
        epi = head.uncertainty(params).epistemic_cov
        torch.testing.assert_close(epi, epi0 * (1 + a * r2**p)[:, None, None], rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="power"):
        head.density.set_evidence_form(1.0, 0.5)


def test_eip_density_and_scale_act_on_nu_and_beta():
    torch.manual_seed(5)
    head = make_head("eip", "6x0e + 6x1o", num_species=1)
    feats = torch.randn(6, 24, dtype=torch.float64)
    forces = torch.zeros(6, 3, dtype=torch.float64)
    p0 = head(feats, forces)
    fit_random_statistics(head)
    head.variance_scale.set(2.5)
    r2 = head.feature_distance_sq(feats, None)
    p1 = head(feats, forces)
    torch.testing.assert_close(p1.nu, p0.nu / (1 + r2**2)[:, None], rtol=1e-12, atol=0)
    torch.testing.assert_close(p1.beta, 2.5 * p0.beta, rtol=1e-12, atol=0)
    torch.testing.assert_close(p1.alpha, p0.alpha, rtol=0, atol=0)


def test_variance_scale_recovers_a_known_miscalibration():
    """Gaussian residuals 2x wider than the predicted covariance: the NLL-optimal c is the
    mean Mahalanobis distance / 3, i.e. about 4."""
    torch.manual_seed(6)
    head = make_head("mve", "6x0e + 6x1o")
    feats = torch.randn(4000, 24, dtype=torch.float64)
    forces = torch.zeros(4000, 3, dtype=torch.float64)
    with torch.no_grad():
        params = head(feats, forces)
        chol = torch.linalg.cholesky(params.cov)
        ref = 2.0 * torch.einsum("nij,nj->ni", chol, torch.randn(4000, 3, dtype=torch.float64))
    c = fit_variance_scale(params, ref, "nll")
    m = torch.einsum("ni,nij,nj->n", ref, params.cov_inv, ref).mean().item() / 3.0
    assert abs(c - m) / m < 1e-3  # the closed-form Gaussian optimum
    assert abs(c - 4.0) < 0.3
    c_ce = fit_variance_scale(params, ref, "ce")
    assert abs(math.log(c_ce / 4.0)) < 0.2
    assert predictive_ce(scale_params(params, c_ce), ref) < 0.02
    assert predictive_ce(scale_params(params, 1.0), ref) > 0.1


def test_student_t_scale_is_the_nll_minimum():
    torch.manual_seed(7)
    head = make_head("e2ip", "6x0e + 6x1o")
    feats = torch.randn(500, 24, dtype=torch.float64)
    with torch.no_grad():
        params = head(feats, torch.zeros(500, 3, dtype=torch.float64))
    ref = 0.3 * torch.randn(500, 3, dtype=torch.float64)
    c = fit_variance_scale(params, ref, "nll")

    def nll(x):
        return predictive_distribution(scale_params(params, x)).nll(ref).mean().item()

    assert nll(c) <= min(nll(c * 1.01), nll(c / 1.01))
    grid = np.exp(np.linspace(-6, 6, 241))
    assert nll(c) <= min(nll(x) for x in grid) + 1e-6
    with pytest.raises(ValueError, match="objective"):
        fit_variance_scale(params, ref, "mae")


def test_old_state_dicts_load_with_no_op_defaults():
    """A head saved before the density and the scale existed loads (NequIP checkpoints are
    state dicts) and behaves as it did."""
    head = make_head("e2ip", "6x0e + 6x1o", num_species=2)
    state = {
        k: v
        for k, v in head.state_dict().items()
        if not k.startswith(("density.", "variance_scale."))
    }
    fresh = make_head("e2ip", "6x0e + 6x1o", num_species=2, seed=9)
    fit_random_statistics(fresh, num_species=2)
    fresh.load_state_dict(state, strict=True)
    assert not fresh.density.fitted and float(fresh.variance_scale.scale) == 1.0


def test_evidence_factor_is_exact_below_the_caps_and_bounded_beyond():
    from eip_plugins.core.feature_density import (
        MAX_DISTANCE_SQ,
        MAX_EVIDENCE_DIVISOR,
        FeatureDensity,
    )

    density = FeatureDensity(1, 2).double()
    r2 = torch.tensor([0.0, 1.0, 64.0, 1e5], dtype=torch.float64)
    torch.testing.assert_close(density.evidence_factor(r2), 1.0 / (1.0 + r2**2), rtol=0, atol=0)
    huge = torch.tensor([1e8, MAX_DISTANCE_SQ, 1e300, float("inf")], requires_grad=True)
    factor = density.evidence_factor(huge.double())
    torch.testing.assert_close(factor, torch.full_like(factor, 1.0 / (1.0 + MAX_EVIDENCE_DIVISOR)))
    (grad,) = torch.autograd.grad(factor.sum(), huge)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("irreps", ["4x0e + 3x1o + 2x1e + 2x2e", "6x0e"])
def test_distance_and_features_share_the_descriptors_and_give_the_separate_results(irreps):
    """``distance_and_features`` computes the invariant descriptors once for the distance and the
    geometric front end (scalar-only features): the same numbers as ``feature_distance_sq`` and
    ``head_features`` (with the front end's own descriptors) one by one."""
    from core_helpers import radius_graph

    head = make_head("e2ip", irreps, num_species=2, r_max=3.0, avg_num_neighbors=4.0)
    assert (head.geometry is not None) == (irreps == "6x0e")
    fit_random_statistics(head, num_species=2)
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(7, o3.Irreps(irreps).dim, generator=g, dtype=torch.float64)
    positions = 2.0 * torch.randn(7, 3, generator=g, dtype=torch.float64)
    edge_index, edge_vectors = radius_graph(positions, 3.0)
    species = torch.tensor([0, 1, 1, 0, 1, 0, 0])
    distance_sq, shared = head.distance_and_features(feats, species, edge_index, edge_vectors)
    assert (distance_sq > 0).all()
    torch.testing.assert_close(distance_sq, head.feature_distance_sq(feats, species))
    torch.testing.assert_close(shared, head.head_features(feats, edge_index, edge_vectors))
