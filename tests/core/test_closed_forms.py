"""The closed forms of e3nn's Linear, symmetric square and spherical harmonics equal e3nn's own
modules (both supported e3nn versions), the covariance head computed through them equals the
head computed through e3nn, and heads pickled before the closed forms gain them on loading."""

import io
import math
import pickle

import pytest
import torch
from core_helpers import make_head, radius_graph, randomised

from eip_plugins.core import GeometricFeatures
from eip_plugins.core._e3nn import o3
from eip_plugins.core.closed_forms import IrrepBlockLinear, harmonics_basis, vector_square_basis
from eip_plugins.core.covariance_head import EquivariantCovarianceHead
from eip_plugins.core.spd import bound_log_scale

LINEAR_CASES = [
    ("16x0e + 16x1o + 16x0e", "8x0e + 8x1o"),  # MACE's concatenated layers: two 0e entries
    ("4x0e + 3x1o + 2x1e + 5x2e + 2x0o", "6x0e + 6x1o + 6x2e"),  # parities the head ignores
    ("8x1o", "4x1o + 4x2e"),  # no scalars in, no 2e in: a zero output block
    ("3x0e + 2x1o + 16x0e + 2x1o + 16x0e + 3x2e", "5x0e + 5x1o + 5x2e"),
]


@pytest.mark.parametrize(("irreps_in", "irreps_out"), LINEAR_CASES)
def test_irrep_block_linear_equals_e3nn_linear(irreps_in, irreps_out):
    linear = randomised(o3.Linear(irreps_in, irreps_out))
    x = torch.randn(7, o3.Irreps(irreps_in).dim, dtype=torch.float64)
    reference = linear(x)
    out = o3.Irreps(irreps_out)
    for i_out, ((mul, ir), sl) in enumerate(zip(out, out.slices(), strict=True)):
        block = IrrepBlockLinear(linear, i_out).double()
        y = block(x, linear.weight)
        assert y.shape == (7, mul, ir.dim)
        torch.testing.assert_close(y.reshape(7, -1), reference[:, sl], rtol=1e-12, atol=1e-12)


def test_irrep_block_linear_refuses_a_linear_it_cannot_reproduce():
    with pytest.raises(ValueError, match="no bias"):
        IrrepBlockLinear(o3.Linear("4x0e", "4x0e", biases=True), 0)
    with pytest.raises(ValueError, match="internal"):
        IrrepBlockLinear(o3.Linear("4x0e", "4x0e", internal_weights=False, shared_weights=False), 0)


def test_irrep_block_linear_gradients_reach_the_e3nn_weight():
    """The block reads the e3nn module's parameter: its gradient is the e3nn forward's."""
    linear = randomised(o3.Linear("5x0e + 4x1o", "3x0e + 3x1o"))
    x = torch.randn(6, linear.irreps_in.dim, dtype=torch.float64)
    probe = torch.randn(6, linear.irreps_out.dim, dtype=torch.float64)
    (reference,) = torch.autograd.grad((linear(x) * probe).sum(), linear.weight)
    blocks = [IrrepBlockLinear(linear, i).double() for i in range(2)]
    y = torch.cat([b(x, linear.weight).reshape(6, -1) for b in blocks], dim=-1)
    (closed,) = torch.autograd.grad((y * probe).sum(), linear.weight)
    torch.testing.assert_close(closed, reference, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("channels", [1, 5])
def test_vector_square_basis_equals_the_elementwise_tensor_product(channels):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # e3nn's coefficients exact to float64
    try:
        square = o3.ElementwiseTensorProduct(f"{channels}x1o", f"{channels}x1o", ["0e", "2e"])
    finally:
        torch.set_default_dtype(previous)
    v = torch.randn(11, channels, 3, dtype=torch.float64)
    reference = square(v.reshape(11, -1), v.reshape(11, -1))
    closed = (v.unsqueeze(-1) * v.unsqueeze(-2)).reshape(11, channels, 9) @ vector_square_basis()
    torch.testing.assert_close(closed[:, :, 0], reference[:, :channels], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        closed[:, :, 1:].reshape(11, -1), reference[:, channels:], rtol=1e-12, atol=1e-12
    )


def test_harmonics_basis_equals_e3nn_spherical_harmonics():
    vectors = 3.0 * torch.randn(50, 3, dtype=torch.float64)
    reference = o3.SphericalHarmonics("1x1o + 1x2e", True, normalization="component")(vectors)
    unit = torch.nn.functional.normalize(vectors, dim=-1)
    features = torch.cat([unit, (unit.unsqueeze(-1) * unit.unsqueeze(-2)).reshape(-1, 9)], -1)
    torch.testing.assert_close(features @ harmonics_basis(), reference, rtol=1e-12, atol=1e-12)


def _tangent_through_e3nn(head: EquivariantCovarianceHead, x: torch.Tensor):
    """The covariance head's tangent vector computed with e3nn's modules (the definition)."""
    n, h = x.shape[0], head.hidden
    mid = head.linear_in(x)
    invariants, offset = [], 0
    if head.has_scalars:
        invariants.append(mid[:, :h])
        offset = h
    vectors = mid[:, offset : offset + 3 * h]
    sq = head.square(vectors, vectors)
    invariants.append(sq[:, :h])
    l2 = [sq[:, h:].reshape(n, h, 5)]
    if head.has_l2:
        l2.append(mid[:, offset + 3 * h :].reshape(n, h, 5))
    out = head.mlp(torch.cat(invariants, dim=-1))
    gates = out[:, 1 : 1 + head.n_l2]
    t = torch.einsum("nc,nck->nk", gates, torch.cat(l2, dim=1)) / math.sqrt(head.n_l2)
    s, t = bound_log_scale(out[:, 0], t, head.max_log_scale)
    return s, t, out[:, 1 + head.n_l2 :]


@pytest.mark.parametrize("irreps", ["6x0e + 4x1o + 6x0e", "5x1o + 3x2e", "4x0e + 3x1o + 2x2e"])
def test_covariance_head_equals_its_e3nn_definition(irreps):
    head = randomised(EquivariantCovarianceHead(irreps, hidden=6, n_scalars=2))
    x = torch.randn(9, o3.Irreps(irreps).dim, dtype=torch.float64)
    for closed, reference in zip(head.tangent(x), _tangent_through_e3nn(head, x), strict=True):
        torch.testing.assert_close(closed, reference, rtol=1e-6, atol=1e-9)


def _without_closed_forms(head: torch.nn.Module) -> bytes:
    """A pickle of ``head`` as an eip-plugins version before the closed forms wrote it."""
    for module in head.modules():
        if isinstance(module, EquivariantCovarianceHead):
            for name in ("linear_scalars", "linear_vectors", "linear_l2"):
                module._modules.pop(name, None)
                module.__dict__.pop(name, None)
            for name in ("square_0e_basis", "square_2e_basis"):
                del module._buffers[name]
        if isinstance(module, GeometricFeatures):
            del module._buffers["harmonics_basis"]
            module._modules["harmonics"] = o3.SphericalHarmonics(
                "1x1o + 1x2e", True, normalization="component"
            )
    buffer = io.BytesIO()
    torch.save(head, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(("kind", "irreps"), [("e2ip", "6x0e + 4x1o"), ("mve", "6x0e")])
def test_heads_pickled_before_the_closed_forms_load_with_them(kind, irreps):
    head = make_head(kind, irreps, r_max=3.0, avg_num_neighbors=4.0).eval()
    positions = 1.4 * torch.randn(8, 3, dtype=torch.float64)
    x = torch.randn(8, o3.Irreps(irreps).dim, dtype=torch.float64)
    inputs = (x, torch.randn(8, 3, dtype=torch.float64), None, *radius_graph(positions, 3.0))
    expected = head(*inputs)
    loaded = torch.load(io.BytesIO(_without_closed_forms(head)), weights_only=False)
    assert "linear_vectors" in loaded.covariance._modules
    if loaded.geometry is not None:
        assert "harmonics" not in loaded.geometry._modules
    for a, b in zip(loaded(*inputs), expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    pickle.loads(pickle.dumps(loaded))  # and it pickles again
