"""Metrics (SPEC §3) against independent computations."""

import numpy as np
import pytest
import torch
from scipy import stats

from eip_plugins.core import configurational_entropy
from eip_plugins.core.metrics import (
    calibration,
    energy_score,
    roc_auc,
    rotational_consistency_error,
    spearman,
    uncertainty_report,
)
from eip_plugins.core.predictive import (
    IndependentStudentT,
    MultivariateNormal,
    MultivariateStudentT,
)


def test_spearman_matches_scipy():
    rng = np.random.default_rng(0)
    a = rng.normal(size=500)
    b = a + rng.normal(size=500)
    assert abs(spearman(torch.tensor(a), torch.tensor(b)) - stats.spearmanr(a, b)[0]) < 1e-6


def test_roc_auc_matches_mann_whitney_and_limits():
    rng = np.random.default_rng(1)
    err = rng.exponential(size=10_000)
    assert roc_auc(torch.tensor(err), torch.tensor(err)) == pytest.approx(1.0)
    noise = rng.normal(size=10_000)
    assert abs(roc_auc(torch.tensor(noise), torch.tensor(err)) - 0.5) < 0.03
    unc = err + rng.normal(scale=1.0, size=err.size)
    pos = np.zeros(err.size, bool)
    pos[np.argsort(-err)[: int(np.ceil(0.2 * err.size))]] = True
    u = stats.mannwhitneyu(unc[pos], unc[~pos]).statistic
    expected = u / (pos.sum() * (~pos).sum())
    assert roc_auc(torch.tensor(unc), torch.tensor(err)) == pytest.approx(expected, abs=1e-6)


def _gaussian(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, 3, 3, generator=g, dtype=torch.float64)
    cov = a @ a.transpose(-1, -2) + 0.1 * torch.eye(3, dtype=torch.float64)
    loc = torch.randn(n, 3, generator=g, dtype=torch.float64)
    return MultivariateNormal(loc, cov)


def test_calibration_of_a_true_model_is_small_and_of_a_wrong_one_large():
    dist = _gaussian(4000)
    y = dist.sample(1, torch.Generator().manual_seed(5))[0]
    assert calibration(dist.credible_level(y))["ce"] < 0.02
    over = MultivariateNormal(dist.loc, dist.cov * 9.0)
    cal = calibration(over.credible_level(y))
    assert cal["ce"] > 0.2 and cal["area"] > 0.2
    # Reliability data: observed fraction inside the p-region versus p.
    assert cal["expected"].shape == cal["observed"].shape


def test_student_t_credible_level_matches_monte_carlo_and_scipy():
    dist = _gaussian(200, seed=3)
    t = MultivariateStudentT(dist.loc, dist.cov, torch.full((200,), 5.0, dtype=torch.float64))
    y = t.sample(1, torch.Generator().manual_seed(7))[0]
    lv = t.credible_level(y).numpy()
    for i in range(5):
        r = (y[i] - t.loc[i]).numpy()
        m = r @ np.linalg.solve(t.shape[i].numpy(), r)  # independent Mahalanobis distance
        f = stats.f.cdf(m / 3, 3, 5.0)
        assert lv[i] == pytest.approx(f, abs=1e-10)
    cal = calibration(t.credible_level(t.sample(1, torch.Generator().manual_seed(8))[0]))
    assert cal["ce"] < 0.06  # 200 draws


def test_independent_t_level_approaches_chi2_for_large_dof():
    n = 300
    loc = torch.zeros(n, 3, dtype=torch.float64)
    scale = torch.full((n, 3), 0.7, dtype=torch.float64)
    dist = IndependentStudentT(loc, scale, torch.full((n, 3), 1e6, dtype=torch.float64))
    y = torch.randn(n, 3, dtype=torch.float64)
    expected = stats.chi2.cdf(((y / 0.7) ** 2).sum(-1).numpy(), df=3)
    assert np.abs(dist.credible_level(y).numpy() - expected).max() < 0.03


def test_energy_score_is_proper_and_reduces_to_distance_for_a_point_mass():
    dist = _gaussian(2000, seed=2)
    y = dist.sample(1, torch.Generator().manual_seed(9))[0]
    true_es = energy_score(dist, y).mean()
    wide = MultivariateNormal(dist.loc, 4.0 * dist.cov)
    assert true_es < energy_score(wide, y).mean()
    point = MultivariateNormal(
        dist.loc, 1e-12 * torch.eye(3, dtype=torch.float64).expand(2000, 3, 3)
    )
    dist_to_loc = torch.linalg.vector_norm(y - dist.loc, dim=-1)
    torch.testing.assert_close(energy_score(point, y), dist_to_loc, rtol=0, atol=1e-5)


def test_rotational_consistency_error():
    from eip_plugins.core._e3nn import o3

    cov = _gaussian(10).cov
    rot = o3.rand_matrix(dtype=torch.float64)
    assert rotational_consistency_error(cov, rot @ cov @ rot.T, rot) < 1e-12
    assert rotational_consistency_error(cov, cov, rot) > 1e-2


def test_uncertainty_report_has_every_metric():
    dist = _gaussian(300)
    y = dist.sample(1, torch.Generator().manual_seed(1))[0]
    sigma = torch.sqrt(dist.cov.diagonal(dim1=-2, dim2=-1).mean(-1))
    batch = torch.arange(300) // 10
    rep = uncertainty_report(dist, dist.loc, y, sigma, batch, 30)
    for key in (
        "force_mae",
        "force_rmse",
        "spearman",
        "roc_auc",
        "nll",
        "ce",
        "miscalibration_area",
        "energy_score",
        "spearman_structure",
        "roc_auc_structure",
    ):
        assert np.isfinite(rep[key]), key


def test_configurational_entropy_limits():
    rng = np.random.default_rng(0)
    assert configurational_entropy(np.zeros(100), np.zeros(100)) == 0.0
    u = rng.uniform(size=(2, 200_000))
    assert configurational_entropy(u[0], u[1], ranges=((0, 1), (0, 1))) > 0.99
    with pytest.raises(ValueError, match="equal length"):
        configurational_entropy(np.zeros(3), np.zeros(4))
