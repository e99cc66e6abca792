"""Predictive distributions of a new force under each head, for evaluation (SPEC §3).

Each distribution is over the (3,) force of every atom, batched over N atoms, and offers:

- ``nll(y)`` (N,): negative log density at the reference force;
- ``credible_level(y)`` (N,): the smallest p such that y lies in the p-credible region
  (highest-density region) — uniform on (0, 1) for a calibrated model;
- ``sample(m, generator)`` (m, N, 3).

These are evaluation utilities (they use scipy and sampling), not part of the training graph.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import special, stats
from torch import Tensor

from .params import GaussianParams, NIGParams, NIWParams


class MultivariateStudentT:
    """t_nu(loc, shape) in 3D. Shapes: loc (N, 3), shape (N, 3, 3), df (N,)."""

    def __init__(self, loc: Tensor, shape: Tensor, df: Tensor):
        self.loc, self.shape, self.df = loc, shape, df

    def mahalanobis(self, y: Tensor) -> Tensor:
        r = (y - self.loc).unsqueeze(-1)
        return (r.transpose(-1, -2) @ torch.linalg.solve(self.shape, r)).reshape(-1)

    def nll(self, y: Tensor) -> Tensor:
        d, nu = 3.0, self.df
        return (
            -torch.lgamma(0.5 * (nu + d))
            + torch.lgamma(0.5 * nu)
            + 0.5 * d * torch.log(nu * math.pi)
            + 0.5 * torch.logdet(self.shape)
            + 0.5 * (nu + d) * torch.log1p(self.mahalanobis(y) / nu)
        )

    def credible_level(self, y: Tensor) -> Tensor:
        # m / d follows an F(d, nu) distribution; HPD regions are Mahalanobis ellipsoids.
        f = (self.mahalanobis(y) / 3.0).detach().cpu().double().numpy()
        level = special.fdtr(3.0, self.df.detach().cpu().double().numpy(), f)
        return torch.as_tensor(level, dtype=y.dtype)

    def sample(self, m: int, generator: torch.Generator) -> Tensor:
        chol = torch.linalg.cholesky(self.shape)
        z = torch.randn((m, *self.loc.shape), generator=generator, dtype=self.loc.dtype)
        chi2 = 2.0 * _standard_gamma(0.5 * self.df.expand(m, -1), generator)
        scale = torch.sqrt(self.df / chi2)  # (m, N)
        return self.loc + scale[..., None] * torch.einsum("nij,mnj->mni", chol, z)


class MultivariateNormal:
    """N(loc, cov) in 3D. Shapes: loc (N, 3), cov (N, 3, 3)."""

    def __init__(self, loc: Tensor, cov: Tensor):
        self.loc, self.cov = loc, cov

    def mahalanobis(self, y: Tensor) -> Tensor:
        r = (y - self.loc).unsqueeze(-1)
        return (r.transpose(-1, -2) @ torch.linalg.solve(self.cov, r)).reshape(-1)

    def nll(self, y: Tensor) -> Tensor:
        return 0.5 * (3.0 * math.log(2 * math.pi) + torch.logdet(self.cov) + self.mahalanobis(y))

    def credible_level(self, y: Tensor) -> Tensor:
        m = self.mahalanobis(y).detach().cpu().double().numpy()
        return torch.as_tensor(stats.chi2.cdf(m, df=3), dtype=y.dtype)

    def sample(self, m: int, generator: torch.Generator) -> Tensor:
        chol = torch.linalg.cholesky(self.cov)
        z = torch.randn((m, *self.loc.shape), generator=generator, dtype=self.loc.dtype)
        return self.loc + torch.einsum("nij,mnj->mni", chol, z)


class IndependentStudentT:
    """Product of three 1D Student-t, the NIG posterior predictive per component.

    Shapes: loc, scale, df all (N, 3). The highest-density region of a product of t's is not an
    ellipsoid, so ``credible_level`` is estimated by Monte Carlo with ``n_mc`` samples per atom.
    """

    def __init__(self, loc: Tensor, scale: Tensor, df: Tensor, n_mc: int = 4000, seed: int = 0):
        self.loc, self.scale, self.df = loc, scale, df
        self.n_mc, self.seed = n_mc, seed

    def log_prob(self, y: Tensor) -> Tensor:
        nu, z = self.df, (y - self.loc) / self.scale
        lp = (
            torch.lgamma(0.5 * (nu + 1))
            - torch.lgamma(0.5 * nu)
            - 0.5 * torch.log(nu * math.pi)
            - torch.log(self.scale)
            - 0.5 * (nu + 1) * torch.log1p(z * z / nu)
        )
        return lp.sum(-1)

    def nll(self, y: Tensor) -> Tensor:
        return -self.log_prob(y)

    def credible_level(self, y: Tensor) -> Tensor:
        gen = torch.Generator().manual_seed(self.seed)
        levels = []
        for start in range(0, y.shape[0], 2048):
            sl = slice(start, start + 2048)
            sub = IndependentStudentT(self.loc[sl], self.scale[sl], self.df[sl])
            samples = sub.sample(self.n_mc, gen)  # (m, n, 3)
            # log densities of the samples, 256 samples at a time (broadcast over atoms)
            lp_samples = torch.cat(
                [sub.log_prob(samples[i : i + 256]) for i in range(0, self.n_mc, 256)]
            )  # (m, n)
            lp_y = sub.log_prob(y[sl])
            levels.append((lp_samples > lp_y).to(y.dtype).mean(0))
        return torch.cat(levels).detach()

    def sample(self, m: int, generator: torch.Generator) -> Tensor:
        z = torch.randn((m, *self.loc.shape), generator=generator, dtype=self.loc.dtype)
        chi2 = 2.0 * _standard_gamma(0.5 * self.df.expand(m, *self.df.shape), generator)
        return self.loc + self.scale * z * torch.sqrt(self.df / chi2)


def _standard_gamma(shape_param: Tensor, generator: torch.Generator) -> Tensor:
    """Gamma(shape, 1) samples drawn through numpy with a seed taken from ``generator``."""
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    rng = np.random.default_rng(seed)
    a = shape_param.detach().cpu().double().numpy()
    return torch.as_tensor(rng.standard_gamma(a), dtype=shape_param.dtype)


def predictive_distribution(params, n_mc: int = 4000):
    """The posterior predictive distribution of the reference force for a head's parameters.

    - e2IP (NIW): multivariate t with nu' = nu_w - 2, loc mu0, shape Psi (kappa+1)/(kappa nu').
    - MVE: N(mean, cov).
    - eIP (NIG): per component t with 2 alpha dof, loc gamma, scale^2 beta (1+nu) / (nu alpha);
      its ``credible_level`` is a Monte Carlo estimate with ``n_mc`` samples per atom.
    """
    if isinstance(params, NIWParams):
        dof = params.nu_w - 2.0
        ratio = (params.kappa + 1.0) / (params.kappa * dof)
        return MultivariateStudentT(params.mu0, params.psi * ratio[:, None, None], dof)
    if isinstance(params, GaussianParams):
        return MultivariateNormal(params.mean, params.cov)
    if isinstance(params, NIGParams):
        scale = torch.sqrt(params.beta * (1.0 + params.nu) / (params.nu * params.alpha))
        return IndependentStudentT(params.gamma, scale, 2.0 * params.alpha, n_mc=n_mc)
    raise TypeError(f"no predictive distribution for parameters of type {type(params).__name__}")


def params_from_fields(fields, forces) -> NIWParams | NIGParams | GaussianParams:
    """Rebuild head parameters from output fields (e.g. a calculator's results).

    Args:
        fields: mapping with the raw evidential fields of one head kind (``e2ip_kappa``,
            ``e2ip_nu_w``, ``e2ip_psi`` | ``eip_nu``, ``eip_alpha``, ``eip_beta`` | ``mve_cov``),
            arrays or tensors over N atoms.
        forces: (N, 3) predicted forces, eV/A.
    """

    def t(x):
        return torch.as_tensor(np_asarray(x), dtype=torch.float64)

    forces = t(forces)
    if "e2ip_psi" in fields:
        psi = t(fields["e2ip_psi"])
        return NIWParams(
            forces,
            t(fields["e2ip_kappa"]),
            t(fields["e2ip_nu_w"]),
            psi,
            torch.linalg.inv(psi),
            torch.logdet(psi),
        )
    if "eip_nu" in fields:
        return NIGParams(forces, t(fields["eip_nu"]), t(fields["eip_alpha"]), t(fields["eip_beta"]))
    if "mve_cov" in fields:
        cov = t(fields["mve_cov"])
        return GaussianParams(forces, cov, torch.linalg.inv(cov), torch.logdet(cov))
    raise KeyError("no evidential parameter fields (e2ip_*, eip_*, mve_cov) in the given fields")


def np_asarray(x):
    return x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)
