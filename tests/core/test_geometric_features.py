"""The geometric front end (scalar-only backbones): exact equivariance at float64, smoothness at
the cutoff, finite gradients, sigma differentiable in the positions, TorchScript, old pickles."""

import io
import pickle

import pytest
import torch
from core_helpers import ToyBackbone, make_head, radius_graph, randomised
from e3nn.util import jit

from eip_plugins.core import GeometricFeatures, HeadConfig, build_head
from eip_plugins.core._e3nn import o3
from eip_plugins.core.spd import symmetric_traceless_basis

R_MAX = 3.0
K = 6  # ToyBackbone widths: its first K columns are invariants only
SCALARS = o3.Irreps(f"{K}x0e")


def _scalar_backbone(toy: ToyBackbone, pos: torch.Tensor) -> torch.Tensor:
    return toy(pos)[:, :K]


def _structure(seed: int = 3, n: int = 10):
    g = torch.Generator().manual_seed(seed)
    return 1.6 * torch.randn(n, 3, generator=g, dtype=torch.float64)


def _as_cartesian(out: torch.Tensor, channels: int):
    """The scalars (N, K), the 1o channels as vectors (N, H, 3) and the 2e channels as symmetric
    traceless matrices (N, H, 3, 3) of a front-end output."""
    n = out.shape[0]
    vectors = out[:, K : K + 3 * channels].reshape(n, channels, 3)
    l2 = out[:, K + 3 * channels :].reshape(n, channels, 5)
    basis = symmetric_traceless_basis(torch.float64)
    return out[:, :K], vectors, torch.einsum("nhk,kij->nhij", l2, basis)


def test_front_end_output_rotates_with_its_irreps(toy_backbone):
    """Under r -> R r + t and a permutation: scalars are unchanged, every 1o channel v -> R v and
    every 2e channel, as a Cartesian matrix, T -> R T R^T (checked in Cartesian form, exact at
    float64: e3nn 0.6's Wigner matrices carry a 1e-7 error)."""
    front = randomised(
        GeometricFeatures(SCALARS, R_MAX, channels=4, avg_num_neighbors=3.0), std=0.5
    )
    assert o3.Irreps(front.irreps_out) == o3.Irreps(f"{K}x0e + 4x1o + 4x2e")
    pos = _structure()
    out = front(_scalar_backbone(toy_backbone, pos), *radius_graph(pos, R_MAX))
    assert out[:, K:].abs().max() > 1e-3  # the geometric channels are not trivially zero
    scalars, vectors, matrices = _as_cartesian(out, 4)
    assert float(matrices.abs().max()) > 1e-3
    for _ in range(10):
        rot = o3.rand_matrix(dtype=torch.float64)
        perm = torch.randperm(len(pos))
        moved = (pos @ rot.T + 5.0 * torch.randn(3, dtype=torch.float64))[perm]
        out_moved = front(_scalar_backbone(toy_backbone, moved), *radius_graph(moved, R_MAX))
        s_m, v_m, m_m = _as_cartesian(out_moved, 4)
        torch.testing.assert_close(s_m, scalars[perm], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(v_m, (vectors @ rot.T)[perm], rtol=1e-10, atol=1e-12)
        expected = (rot @ matrices @ rot.T)[perm]
        torch.testing.assert_close(m_m, expected, rtol=1e-10, atol=1e-12)


def test_inversion_flips_the_vectors_and_keeps_the_l2_channels(toy_backbone):
    front = randomised(GeometricFeatures(SCALARS, R_MAX, channels=3), std=0.5)
    pos = _structure(seed=8)
    out = front(_scalar_backbone(toy_backbone, pos), *radius_graph(pos, R_MAX))
    inverted = front(_scalar_backbone(toy_backbone, -pos), *radius_graph(-pos, R_MAX))
    torch.testing.assert_close(inverted[:, K : K + 9], -out[:, K : K + 9])
    torch.testing.assert_close(inverted[:, K + 9 :], out[:, K + 9 :])


def test_features_are_smooth_when_a_neighbour_crosses_the_cutoff():
    """A pair at r_max - eps contributes (almost) nothing, so dropping it at r_max + eps is
    continuous: the envelope and its first derivatives vanish at r_max."""
    front = randomised(GeometricFeatures("2x0e", R_MAX, channels=3), std=0.5)
    feats = torch.randn(2, 2, dtype=torch.float64)
    edge_index = torch.tensor([[0, 1], [1, 0]])
    for eps in (1e-2, 1e-3):
        r = torch.tensor([R_MAX - eps, 0.0, 0.0], dtype=torch.float64)
        out = front(feats, edge_index, torch.stack([r, -r]))
        assert out[:, 2:].abs().max() < 1e3 * eps**3


def test_one_atom_without_neighbours_gets_zero_geometric_channels():
    front = randomised(GeometricFeatures(SCALARS, R_MAX, channels=2), std=0.5)
    feats = torch.randn(1, K, dtype=torch.float64)
    out = front(feats, torch.zeros(2, 0, dtype=torch.long), torch.zeros(0, 3, dtype=torch.float64))
    torch.testing.assert_close(out[:, :K], feats)
    assert bool((out[:, K:] == 0).all())


@pytest.mark.parametrize("kind", ["e2ip", "mve"])
@pytest.mark.parametrize("mode", ["auto", "always"])
def test_covariance_of_a_scalar_or_vector_backbone_rotates(kind, mode, toy_backbone):
    """Sigma(R x) = R Sigma(x) R^T at float64 through the geometric front end, on scalar-only
    features (auto) and on top of 1o features (always)."""
    irreps = SCALARS if mode == "auto" else toy_backbone.irreps_out
    head = make_head(kind, irreps, r_max=R_MAX, avg_num_neighbors=4.0, geometric_features=mode)
    assert head.geometry is not None

    def backbone(p):
        return _scalar_backbone(toy_backbone, p) if mode == "auto" else toy_backbone(p)

    pos = _structure(seed=5)
    forces = torch.randn(len(pos), 3, dtype=torch.float64)
    unc = head.uncertainty(head(backbone(pos), forces, None, *radius_graph(pos, R_MAX)))
    for _ in range(10):
        rot = o3.rand_matrix(dtype=torch.float64)
        moved = pos @ rot.T
        params = head(backbone(moved), forces @ rot.T, None, *radius_graph(moved, R_MAX))
        moved_unc = head.uncertainty(params)
        for name in ("aleatoric_cov", "epistemic_cov"):
            cov, cov_moved = getattr(unc, name), getattr(moved_unc, name)
            scale = float(cov.abs().max())
            torch.testing.assert_close(cov_moved, rot @ cov @ rot.T, rtol=0, atol=1e-9 * scale)
        eigenvalues = torch.linalg.eigvalsh(moved_unc.aleatoric_cov)
        assert bool((eigenvalues > 0).all())


@pytest.mark.parametrize("kind", ["eip", "e2ip", "mve"])
def test_sigma_is_differentiable_in_the_positions(kind, toy_backbone):
    """UDD needs d sigma / d r: it is finite and matches finite differences (float64)."""
    head = make_head(kind, SCALARS, r_max=R_MAX, avg_num_neighbors=4.0).eval()
    pos = _structure(seed=11, n=6)
    forces = torch.randn(len(pos), 3, dtype=torch.float64)

    def total_sigma(p):
        feats = _scalar_backbone(toy_backbone, p)
        return head.uncertainty(head(feats, forces, None, *radius_graph(p, R_MAX))).sigma.sum()

    assert torch.autograd.gradcheck(total_sigma, (pos.clone().requires_grad_(True),))


@pytest.mark.parametrize("kind", ["eip", "e2ip", "mve"])
def test_training_gradients_are_finite_and_reach_the_front_end(kind, toy_backbone):
    head = make_head(kind, SCALARS, r_max=R_MAX, force_objective="nll").train()
    pos = _structure(seed=12)
    feats = _scalar_backbone(toy_backbone, pos).requires_grad_(True)
    forces = torch.randn(len(pos), 3, dtype=torch.float64, requires_grad=True)
    params = head(feats, forces, None, *radius_graph(pos, R_MAX))
    head.force_loss(params, forces.detach() + 0.3).mean().backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert float(head.geometry.neighbour.weight.grad.abs().sum()) > 0.0
    assert torch.isfinite(feats.grad).all()


@pytest.mark.parametrize("kind", ["eip", "e2ip", "mve"])
def test_head_with_front_end_scripts_and_matches_eager(kind, toy_backbone):
    from e3nn.util.jit import compile_mode

    @compile_mode("script")
    class Wrapper(torch.nn.Module):
        def __init__(self, head):
            super().__init__()
            self.head = head

        def forward(self, x, f, species, edge_index, edge_vectors):
            params, distance_sq = self.head.forward_with_distance(
                x, f, species, edge_index, edge_vectors
            )
            return self.head.fields(params, torch.zeros_like(species), 1, distance_sq)

    head = make_head(kind, SCALARS, num_species=2, r_max=R_MAX).eval()
    wrapper = Wrapper(head)
    saved = io.BytesIO()
    torch.jit.save(jit.compile(wrapper), saved)
    saved.seek(0)
    loaded = torch.jit.load(saved)
    pos = _structure(seed=13)
    args = (
        _scalar_backbone(toy_backbone, pos),
        torch.randn(len(pos), 3, dtype=torch.float64),
        torch.arange(len(pos)) % 2,
        *radius_graph(pos, R_MAX),
    )
    eager, compiled = wrapper(*args), loaded(*args)
    assert set(eager) == set(compiled)
    for key in eager:
        torch.testing.assert_close(compiled[key], eager[key])


@pytest.mark.parametrize("kind", ["eip", "e2ip", "mve"])
def test_heads_pickled_before_the_front_end_load_and_run(kind, toy_backbone):
    """A head of an older eip-plugins (no ``geometry``/``head_irreps``) reads its features."""
    head = make_head(kind, toy_backbone.irreps_out)
    state = head.__getstate__().copy()
    del state["geometry"], state["head_irreps"]
    old = pickle.loads(pickle.dumps(head))
    old.__dict__.clear()
    old.__setstate__(state)
    pos = _structure()
    feats, forces = toy_backbone(pos), torch.randn(len(pos), 3, dtype=torch.float64)
    assert old.geometry is None and old.head_irreps == head.irreps_in
    expected = head.uncertainty(head(feats, forces)).sigma
    torch.testing.assert_close(old.uncertainty(old(feats, forces)).sigma, expected)


def test_never_keeps_the_backbone_features_only(toy_backbone):
    config = HeadConfig(kind="e2ip", geometric_features="never")
    head = build_head(config, toy_backbone.irreps_out, r_max=R_MAX)
    assert head.geometry is None and head.head_irreps == str(toy_backbone.irreps_out)
