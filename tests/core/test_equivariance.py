"""Sigma(R x) = R Sigma(x) R^T for e2ip and mve; eip is (by design) not equivariant."""

import pytest
import torch
from core_helpers import make_head

from eip_plugins.core._e3nn import o3

IRREPS = [o3.Irreps("6x0e + 6x1o"), o3.Irreps("4x0e + 3x1o + 2x1e + 2x2e")]


def _covariances(head, feats, forces):
    params = head(feats, forces)
    unc = head.uncertainty(params)
    return unc.epistemic_cov, unc.aleatoric_cov


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("kind", ["e2ip", "mve"])
@pytest.mark.parametrize("irreps", IRREPS, ids=str)
def test_covariance_rotates_with_features(kind, irreps):
    torch.manual_seed(1)
    head = make_head(kind, irreps)
    feats = torch.randn(7, irreps.dim, dtype=torch.float64)
    forces = torch.randn(7, 3, dtype=torch.float64)
    epi, ale = _covariances(head, feats, forces)
    for _ in range(20):
        rot = o3.rand_matrix(dtype=torch.float64)
        d = irreps.D_from_matrix(rot)
        epi_r, ale_r = _covariances(head, feats @ d.T, forces @ rot.T)
        for cov, cov_r in ((epi, epi_r), (ale, ale_r)):
            if kind == "mve" and cov is epi:
                continue  # mve has no epistemic part (zeros)
            assert _rel(cov_r, rot @ cov @ rot.T) < 1e-6


@pytest.mark.parametrize("kind", ["e2ip", "mve"])
def test_structure_rotation_translation_permutation(kind, toy_backbone):
    torch.manual_seed(2)
    head = make_head(kind, toy_backbone.irreps_out)
    pos = 1.5 * torch.randn(9, 3, dtype=torch.float64)
    forces = torch.randn(9, 3, dtype=torch.float64)
    _, ale = _covariances(head, toy_backbone(pos), forces)
    sigma = head.uncertainty(head(toy_backbone(pos), forces)).sigma
    for _ in range(20):
        rot = o3.rand_matrix(dtype=torch.float64)
        shift = torch.randn(3, dtype=torch.float64) * 10
        perm = torch.randperm(9)
        moved = (pos @ rot.T + shift)[perm]
        _, ale_m = _covariances(head, toy_backbone(moved), (forces @ rot.T)[perm])
        assert _rel(ale_m, (rot @ ale @ rot.T)[perm]) < 1e-6
        sigma_m = head.uncertainty(head(toy_backbone(moved), forces[perm])).sigma
        torch.testing.assert_close(sigma_m, sigma[perm], rtol=1e-9, atol=0)


def test_eip_head_is_not_equivariant(toy_backbone):
    """The eIP reference head acts on Cartesian rows independently: its variances change
    (beyond a permutation of components) under rotation. This is the paper's baseline."""
    torch.manual_seed(3)
    head = make_head("eip", toy_backbone.irreps_out)
    pos = 1.5 * torch.randn(9, 3, dtype=torch.float64)
    forces = torch.randn(9, 3, dtype=torch.float64)
    sigma = head.uncertainty(head(toy_backbone(pos), forces)).sigma
    rot = o3.rand_matrix(dtype=torch.float64)
    sigma_r = head.uncertainty(head(toy_backbone(pos @ rot.T), forces @ rot.T)).sigma
    assert (sigma_r - sigma).abs().max() > 1e-3
    # ... while translations and permutations still leave it unchanged (per atom).
    perm = torch.randperm(9)
    sigma_tp = head.uncertainty(head(toy_backbone(pos[perm] + 3.0), forces[perm])).sigma
    torch.testing.assert_close(sigma_tp, sigma[perm])
