"""Property-based fuzz of the three heads (hypothesis): 10^4 random feature tensors in all —
huge (up to 1e20), tiny (subnormal), zero, and degenerate (identical atoms, zero vector channels)
— give finite outputs, finite gradients of the training loss, and SPD covariances, with the
feature statistics fitted (the density-aware evidence active) and the predicted forces random.

Deterministic (``derandomize``, no example database): the same examples in every run.
"""

from __future__ import annotations

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import torch
from core_helpers import fit_random_statistics, make_head
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eip_plugins.core._e3nn import o3

IRREPS = o3.Irreps("4x0e + 4x1o")
TENSORS_PER_EXAMPLE = 4  # evaluated in one pass: the heads act on each atom independently
EXAMPLES_PER_HEAD = 834  # x 4 tensors x 3 heads = 10^4 feature tensors
HUGE = 1e20

_values = st.floats(-HUGE, HUGE, allow_nan=False, allow_infinity=False, allow_subnormal=True)
_rows = st.integers(1, 6)


@st.composite
def feature_tensors(draw) -> np.ndarray:
    """(N, D) features: random, or N copies of one atom, or with the vector channels zeroed."""
    n = draw(_rows)
    kind = draw(st.sampled_from(("random", "identical", "scalars_only")))
    if kind == "identical":
        row = draw(hnp.arrays(np.float64, (1, IRREPS.dim), elements=_values))
        return np.repeat(row, n, axis=0)
    x = draw(hnp.arrays(np.float64, (n, IRREPS.dim), elements=_values))
    if kind == "scalars_only":
        x[:, 4:] = 0.0
    return x


@pytest.fixture(scope="module", params=["e2ip", "eip", "mve"])
def head(request):
    # the papers' objective: the loss's gradient reaches the features too, so both are checked
    head = make_head(request.param, IRREPS, force_objective="nll")
    fit_random_statistics(head)
    head.kind = request.param
    return head


def _check(head, x: np.ndarray, scale: float) -> None:
    features = torch.tensor(x, requires_grad=True)
    g = torch.Generator().manual_seed(len(x))
    forces = scale * torch.randn(len(x), 3, generator=g, dtype=torch.float64)
    reference = forces + torch.randn(len(x), 3, generator=g, dtype=torch.float64)
    params, distance_sq = head.forward_with_distance(features, forces)
    unc = head.uncertainty(params)
    covariances = [unc.aleatoric_cov] + ([] if head.kind == "mve" else [unc.epistemic_cov])
    for cov in covariances:
        assert torch.isfinite(cov).all(), x
        assert torch.equal(cov, cov.transpose(-1, -2))
        assert (torch.linalg.eigvalsh(cov) > 0).all(), (x, cov)
    assert torch.isfinite(distance_sq).all() and (distance_sq >= 0).all()
    loss = head.force_loss(params, reference).mean()
    assert torch.isfinite(loss), x
    grads = torch.autograd.grad(loss, [features, *head.parameters()], allow_unused=True)
    for grad in grads:
        assert grad is None or torch.isfinite(grad).all(), x


@settings(
    max_examples=EXAMPLES_PER_HEAD,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    tensors=st.lists(feature_tensors(), min_size=TENSORS_PER_EXAMPLE, max_size=TENSORS_PER_EXAMPLE),
    scale=st.sampled_from([0.0, 1e-3, 1.0, 1e3]),
)
def test_heads_are_finite_and_spd_for_any_features(head, tensors, scale):
    _check(head, np.concatenate(tensors), scale)
