"""UDD (SPEC §2): the limiter bound and autograd bias forces against finite differences."""

import math

import numpy as np
import pytest
import torch
from core_helpers import make_head

from eip_plugins.core import UDDConfig, limit_bias_forces, udd_bias_energy, udd_bias_forces


@pytest.mark.parametrize("c, d", [(1.0, 0.2), (3.0, 0.05), (0.5, 2.0)])
def test_limited_bias_force_is_bounded(c, d):
    cfg = UDDConfig(C=c, D=d)
    f = torch.cat([torch.logspace(-8, 8, 2001, dtype=torch.float64), torch.randn(10_000) * 5])
    f = torch.cat([f, -f])
    lim = limit_bias_forces(f, cfg)
    assert torch.isfinite(lim).all()
    assert lim.abs().max() <= c * d * math.exp(-0.5) * (1 + 1e-12)
    assert cfg.max_bias_force == pytest.approx(c * d * math.exp(-0.5))
    # the bound is attained at |f| = D
    assert limit_bias_forces(torch.tensor([d], dtype=torch.float64), cfg).item() == pytest.approx(
        cfg.max_bias_force
    )


@pytest.mark.parametrize("form", ["squared", "linear"])
@pytest.mark.parametrize("kind", ["e2ip", "eip"])
def test_bias_forces_equal_finite_differences(form, kind, toy_backbone):
    head = make_head(kind, toy_backbone.irreps_out).eval()  # as the calculators run it
    cfg = UDDConfig(A=2.0, B=0.5, form=form)
    torch.manual_seed(0)
    pos0 = 1.2 * torch.randn(6, 3, dtype=torch.float64)

    def energy(pos):
        feats = toy_backbone(pos)
        sigma = head.uncertainty(head(feats, torch.zeros(6, 3, dtype=torch.float64))).sigma
        return udd_bias_energy(sigma.mean(), len(pos), cfg)

    pos = pos0.clone().requires_grad_(True)
    forces = udd_bias_forces(energy(pos), pos)
    h = 1e-6
    fd = np.zeros((6, 3))
    for i in range(6):
        for c in range(3):
            plus, minus = pos0.clone(), pos0.clone()
            plus[i, c] += h
            minus[i, c] -= h
            fd[i, c] = -(energy(plus) - energy(minus)).item() / (2 * h)
    np.testing.assert_allclose(forces.numpy(), fd, rtol=1e-5, atol=1e-5 * np.abs(fd).max())
    assert np.abs(fd).max() > 1e-6  # the test is not vacuous


def test_zero_depth_means_zero_bias():
    sigma = torch.tensor([0.3], requires_grad=True)
    assert udd_bias_energy(sigma, 9, UDDConfig(A=0.0)).item() == 0.0
