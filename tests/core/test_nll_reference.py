"""Closed-form NLLs against independent computations (scipy, a NumPy transcription of SPEC)."""

import math

import numpy as np
import pytest
import torch
from core_helpers import make_head
from scipy import special, stats

from eip_plugins.core import (
    NIGParams,
    evidential_force_nll,
    evidential_force_regularizer,
    gaussian_force_nll,
    niw_evidence_regularizer,
    niw_student_t_nll,
)
from eip_plugins.core._e3nn import o3
from eip_plugins.core.predictive import predictive_distribution

IRREPS = o3.Irreps("6x0e + 6x1o")


def _head_params(kind, n=12, seed=0):
    head = make_head(kind, IRREPS, seed=seed)
    torch.manual_seed(seed + 10)
    feats = torch.randn(n, IRREPS.dim, dtype=torch.float64)
    forces = torch.randn(n, 3, dtype=torch.float64)
    y = forces + 0.5 * torch.randn(n, 3, dtype=torch.float64)
    return head(feats, forces), y


def test_e2ip_nll_equals_scipy_multivariate_t():
    p, y = _head_params("e2ip")
    ours = niw_student_t_nll(p, y).detach().numpy()
    for i in range(len(y)):
        dof = p.nu_w[i].item() - 3 + 1
        shape = (p.psi[i] * (p.kappa[i] + 1) / (p.kappa[i] * dof)).detach().numpy()
        ref = -stats.multivariate_t.logpdf(
            y[i].numpy(), loc=p.mu0[i].detach().numpy(), shape=shape, df=dof
        )
        assert abs(ours[i] - ref) < 1e-8 * max(1.0, abs(ref))


def test_mve_nll_equals_scipy_multivariate_normal():
    p, y = _head_params("mve")
    ours = gaussian_force_nll(p, y).detach().numpy()
    for i in range(len(y)):
        ref = -stats.multivariate_normal.logpdf(
            y[i].numpy(), mean=p.mean[i].detach().numpy(), cov=p.cov[i].detach().numpy()
        )
        assert abs(ours[i] - ref) < 1e-8 * max(1.0, abs(ref))


def _numpy_eip(gamma, nu, alpha, beta, y, q):
    """Independent transcription of SPEC §1a."""
    omega = 2.0 / (q * (1 - q))
    tau = (1 - 2 * q) / (q * (1 - q))
    z = beta / (alpha - 1)
    mu = gamma + tau * z
    big = 4 * beta * (1 + omega * z * nu)
    nll = (
        0.5 * np.log(np.pi / nu)
        - alpha * np.log(big)
        + (alpha + 0.5) * np.log(nu * (y - mu) ** 2 + big)
        + special.gammaln(alpha)
        - special.gammaln(alpha + 0.5)
    )
    e = y - gamma
    rho = np.maximum(q * e, (q - 1) * e)
    reg = rho * (2 * nu + alpha + 1 / beta)
    return nll, reg


@pytest.mark.parametrize("q", [0.1, 0.4, 0.5, 0.9])
def test_eip_nll_and_regulariser_against_numpy(q):
    gamma = np.array([[0.1, -0.5, 2.0], [1.2, 0.0, -0.3]])
    nu = np.array([[0.5, 2.0, 0.01], [3.0, 0.2, 1.0]])
    alpha = np.array([[1.5, 3.0, 1.01], [2.2, 10.0, 1.3]])
    beta = np.array([[0.2, 1.0, 0.05], [0.7, 0.01, 2.0]])
    y = np.array([[0.3, -0.4, 1.0], [1.0, 0.5, -0.3]])
    nll_ref, reg_ref = _numpy_eip(gamma, nu, alpha, beta, y, q)
    params = NIGParams(*(torch.tensor(a) for a in (gamma, nu, alpha, beta)))
    np.testing.assert_allclose(
        evidential_force_nll(params, torch.tensor(y), q).numpy(), nll_ref, rtol=1e-12
    )
    np.testing.assert_allclose(
        evidential_force_regularizer(params, torch.tensor(y), q).numpy(), reg_ref, rtol=1e-12
    )


def test_e2ip_regulariser_formula():
    p, y = _head_params("e2ip")
    ref = torch.linalg.vector_norm(y - p.mu0, dim=-1) * (2 * p.kappa + p.nu_w)
    torch.testing.assert_close(niw_evidence_regularizer(p, y), ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kind", ["e2ip", "mve", "eip"])
def test_predictive_nll_against_scipy(kind):
    p, y = _head_params(kind)
    dist = predictive_distribution(p)
    ours = dist.nll(y).detach().numpy()
    if kind == "e2ip":
        torch.testing.assert_close(dist.nll(y), niw_student_t_nll(p, y), rtol=1e-10, atol=1e-10)
        return
    if kind == "mve":
        torch.testing.assert_close(dist.nll(y), gaussian_force_nll(p, y), rtol=1e-10, atol=1e-10)
        return
    gamma, nu, alpha, beta = (t.detach().numpy() for t in p)
    scale = np.sqrt(beta * (1 + nu) / (nu * alpha))
    ref = -stats.t.logpdf(y.numpy(), df=2 * alpha, loc=gamma, scale=scale).sum(-1)
    np.testing.assert_allclose(ours, ref, rtol=1e-10)
    assert math.isfinite(float(ours.sum()))


@pytest.mark.parametrize("kind", ["e2ip", "mve", "eip"])
def test_params_round_trip_through_output_fields(kind):
    from eip_plugins.core.predictive import params_from_fields

    p, y = _head_params(kind)
    head = make_head(kind, IRREPS)
    fields = {k: v.detach().numpy() for k, v in head.output_fields(p).items()}
    rebuilt = params_from_fields(fields, p[0].detach().numpy())
    torch.testing.assert_close(
        predictive_distribution(rebuilt).nll(y), predictive_distribution(p).nll(y).detach()
    )
