"""Finite gradients of every loss at the numerically hard points (SPEC §1b numerical rules)."""

import pytest
import torch
from core_helpers import make_head

from eip_plugins.core import (
    NIGParams,
    evidential_force_nll,
    evidential_force_regularizer,
)
from eip_plugins.core._e3nn import o3

IRREPS = o3.Irreps("6x0e + 6x1o")


def _feats(case: str, n: int = 16) -> torch.Tensor:
    torch.manual_seed(4)
    x = torch.randn(n, IRREPS.dim, dtype=torch.float64)
    if case == "isotropic":  # T = 0 exactly: degenerate spectrum of S
        x[:, 6:] = 0.0
    elif case == "large":  # |S| saturates the bound
        x = x * 1e3
    elif case == "tiny":
        x = x * 1e-8
    return x.requires_grad_(True)


# "isotropic" (T = 0) concerns the tangent-space heads only; eip's zero-vector limit is "tiny".
CASES = [(k, c) for k in ("eip", "e2ip", "mve") for c in ("isotropic", "large", "tiny", "random")]
CASES.remove(("eip", "isotropic"))


@pytest.mark.parametrize("kind, case", CASES)
def test_head_loss_gradients_are_finite(kind, case):
    """The papers' objective (nll): the loss trains the backbone's features and forces too."""
    head = make_head(kind, IRREPS, force_objective="nll")
    feats = _feats(case)
    forces = torch.randn(len(feats), 3, dtype=torch.float64, requires_grad=True)
    ref = forces.detach().clone()
    ref[: len(ref) // 2] += torch.randn(len(ref) // 2, 3, dtype=torch.float64)
    params = head(feats, forces)
    loss = head.force_loss(params, ref).mean()
    loss = loss + head.uncertainty(params).sigma.sum()
    assert torch.isfinite(loss)
    loss.backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert torch.isfinite(feats.grad).all() and torch.isfinite(forces.grad).all()


@pytest.mark.parametrize("where", ["alpha_to_1", "nu_to_0", "beta_to_0", "exact_fit"])
def test_nig_loss_gradients_finite_at_limits(where):
    n = 8
    gamma = torch.randn(n, 3, dtype=torch.float64, requires_grad=True)
    nu = torch.full((n, 3), 0.5, dtype=torch.float64)
    alpha = torch.full((n, 3), 2.0, dtype=torch.float64)
    beta = torch.full((n, 3), 0.3, dtype=torch.float64)
    y = gamma.detach() + 0.1
    if where == "alpha_to_1":
        alpha = torch.full_like(alpha, 1.0 + 1e-5)
    elif where == "nu_to_0":
        nu = torch.full_like(nu, 1e-5)
    elif where == "beta_to_0":
        beta = torch.full_like(beta, 1e-6)
    else:
        y = gamma.detach().clone()
    leaves = [t.requires_grad_(True) for t in (nu, alpha, beta)]
    params = NIGParams(gamma, *leaves)
    loss = evidential_force_nll(params, y, 0.4) + evidential_force_regularizer(params, y, 0.4)
    loss.sum().backward()
    for t in (gamma, *leaves):
        assert torch.isfinite(t.grad).all()


@pytest.mark.parametrize("kind", ["eip", "e2ip", "mve"])
def test_detached_objective_trains_the_head_only(kind):
    """Training mode, detached objective: the head's loss has zero gradient with respect to the
    backbone's features and forces (so to every backbone parameter), finite ones for the head's
    parameters; in evaluation mode sigma stays differentiable with respect to the features (UDD)."""
    head = make_head(kind, IRREPS).train()
    assert head.detach_backbone
    feats = _feats("random")
    forces = torch.randn(len(feats), 3, dtype=torch.float64, requires_grad=True)
    ref = forces.detach() + torch.randn(len(feats), 3, dtype=torch.float64)
    params = head(feats, forces)
    loss = head.force_loss(params, ref).mean()
    assert not any(p.requires_grad for p in (params[0],))  # the mean is the detached force
    grads = torch.autograd.grad(loss, [feats, forces, *head.parameters()], allow_unused=True)
    assert grads[0] is None and grads[1] is None
    trainable = [
        g for g, p in zip(grads[2:], list(head.parameters()), strict=True) if p.requires_grad
    ]
    assert trainable and all(g is not None and torch.isfinite(g).all() for g in trainable)
    assert any(g.abs().sum() > 0 for g in trainable)

    head.eval()
    sigma = head.uncertainty(head(feats, forces)).sigma.sum()
    (grad_feats,) = torch.autograd.grad(sigma, [feats])
    assert torch.isfinite(grad_feats).all() and grad_feats.abs().sum() > 0


def test_e2ip_regulariser_gradient_finite_at_zero_error():
    head = make_head("e2ip", IRREPS, force_objective="nll")
    feats = _feats("random")
    forces = torch.randn(len(feats), 3, dtype=torch.float64, requires_grad=True)
    params = head(feats, forces)
    head.force_loss(params, forces.detach().clone()).sum().backward()
    assert torch.isfinite(forces.grad).all()
