"""Equivariant vector (1o) and l = 2 (2e) per-atom features built from the local geometry, for
backbones whose node features are invariant only (scalar MACE, NequIP with ``l_max = 0``).

For each atom i and channel c, over its neighbours j (r_ij = r_j - r_i, r = |r_ij| < r_max):

    v_ic^(l) = 1/n_avg * sum_j  R_c^(l)(r) * s_c^(l)(h_j) * Y^(l)(r_ij / r),    l = 1, 2

with Y^(l) e3nn's component-normalised spherical harmonics (l = 1: sqrt(3) times the unit vector
in x, y, z order; computed as one matrix product, :func:`~.closed_forms.harmonics_basis`), R a
small bias-free MLP of a Bessel basis times a smooth polynomial envelope (so R is zero with its
first derivatives at r_max), s a linear map of the neighbour's invariant descriptors h_j
(:class:`~eip_plugins.core.invariants.InvariantFeatures`: its scalars and channel norms), and
n_avg the backbone's average number of neighbours. R and s are invariant and Y^(l) rotates with
its Wigner matrix, so v^(l) is exactly equivariant (and smooth in the positions: sigma stays
differentiable for UDD). It is one pass over the edges with a few channels: the cost of a single
small message-passing step without tensor products.

The output is the backbone's features followed by the new ones, ``irreps_in + Hx1o + Hx2e``, so
every head reads it as it reads the features of a backbone with l >= 1 features.
"""

import math
from typing import Optional

import torch
from torch import Tensor, nn

from ._e3nn import o3
from .closed_forms import harmonics_basis
from .invariants import InvariantFeatures


class BesselEnvelope(nn.Module):
    """r (E,) A -> sqrt(2 / r_max) sin(n pi r / r_max) / r * u(r / r_max), (E, num_basis),
    n = 1..num_basis, with the polynomial envelope u(x) = 1 - 28 x^6 + 48 x^7 - 21 x^8 (p = 6 of
    DimeNet; u(1) = u'(1) = u''(1) = 0) and 0 beyond r_max."""

    def __init__(self, r_max: float, num_basis: int = 8):
        super().__init__()
        if not r_max > 0.0:
            raise ValueError(f"invalid r_max={r_max!r}: the cutoff must be > 0 A")
        self.r_max = float(r_max)
        self.register_buffer(
            "frequencies", torch.arange(1, num_basis + 1, dtype=torch.float64) * math.pi / r_max
        )

    def forward(self, r: Tensor) -> Tensor:
        x = (r / self.r_max).clamp(max=1.0)
        envelope = 1.0 - 28.0 * x**6 + 48.0 * x**7 - 21.0 * x**8
        safe_r = r.clamp_min(1e-9)[:, None]
        bessel = torch.sin(self.frequencies.to(r.dtype) * safe_r) / safe_r
        return math.sqrt(2.0 / self.r_max) * bessel * envelope[:, None]


class GeometricFeatures(nn.Module):
    """Backbone node features plus geometric 1o and 2e channels (module docstring).

    Args:
        irreps_in: irreps of the backbone's node features (any, e.g. ``"64x0e"``).
        r_max: the backbone's cutoff, A.
        channels: H, the number of new 1o and of new 2e channels.
        avg_num_neighbors: n_avg, the normalisation of the neighbour sum.
        num_basis: number of Bessel functions of the radial basis.

    Forward:
        node_feats (N, irreps_in.dim), edge_index (2, E) int64 with row 0 the centre atom i and
        row 1 its neighbour j, edge_vectors (E, 3) r_j - r_i (periodic images included), A,
        optionally invariants (N, D) (``self.invariants(node_feats)``, when the caller has them)
        -> (N, irreps_out.dim) with ``irreps_out = irreps_in + Hx1o + Hx2e``.
    """

    def __init__(
        self,
        irreps_in,
        r_max: float,
        channels: int = 16,
        avg_num_neighbors: float = 1.0,
        num_basis: int = 8,
    ):
        super().__init__()
        irreps_in = o3.Irreps(irreps_in)
        if int(channels) < 1:
            raise ValueError(f"invalid geometric_channels={channels!r}: must be >= 1")
        if not avg_num_neighbors > 0.0:
            raise ValueError(f"invalid avg_num_neighbors={avg_num_neighbors!r}: must be > 0")
        self.channels = int(channels)
        self.feature_dim = irreps_in.dim
        self.irreps_out = str(irreps_in + o3.Irreps(f"{channels}x1o + {channels}x2e"))
        self.norm = 1.0 / float(avg_num_neighbors)
        self.invariants = InvariantFeatures(irreps_in)
        self.radial_basis = BesselEnvelope(r_max, num_basis)
        # no biases: the radial weights vanish with the basis (and its derivatives) at r_max
        self.radial = nn.Sequential(
            nn.Linear(num_basis, 2 * self.channels, bias=False),
            nn.SiLU(),
            nn.Linear(2 * self.channels, 2 * self.channels, bias=False),
        )
        self.neighbour = nn.Linear(self.invariants.dim, 2 * self.channels)
        # e3nn's SphericalHarmonics("1x1o + 1x2e", normalize=True, normalization="component") as
        # one matrix product of [u, u u^T] (:func:`~.closed_forms.harmonics_basis`)
        self.register_buffer("harmonics_basis", harmonics_basis(), persistent=False)

    def __setstate__(self, state) -> None:
        # pickled with e3nn's SphericalHarmonics module: its closed form instead
        super().__setstate__(state)
        self._modules.pop("harmonics", None)
        if "harmonics_basis" not in self._buffers:
            like = self.radial_basis.frequencies  # the module's dtype and device
            self.register_buffer("harmonics_basis", harmonics_basis().to(like), persistent=False)

    def forward(
        self,
        node_feats: Tensor,
        edge_index: Tensor,
        edge_vectors: Tensor,
        invariants: Optional[Tensor] = None,
    ) -> Tensor:
        n = node_feats.shape[0]
        if invariants is None:
            invariants = self.invariants(node_feats)
        h = self.channels
        centre, neighbour = edge_index[0], edge_index[1]
        vectors = edge_vectors.to(node_feats.dtype)
        r = torch.linalg.vector_norm(vectors, dim=-1)
        weights = self.radial(self.radial_basis(r)) * self.neighbour(invariants).index_select(
            0, neighbour
        )  # (E, 2H)
        unit = torch.nn.functional.normalize(vectors, dim=-1)
        outer = (unit.unsqueeze(-1) * unit.unsqueeze(-2)).reshape(-1, 9)
        sh = torch.cat([unit, outer], dim=-1) @ self.harmonics_basis.to(unit.dtype)  # (E, 3 + 5)
        # the two degrees summed over the edges separately (no (E, 8H) concatenation), in the
        # e3nn layout of Hx1o + Hx2e
        zeros = torch.zeros(n, 8 * h, dtype=weights.dtype, device=weights.device)
        vectors_sum = zeros[:, : 3 * h].index_add(
            0, centre, (weights[:, :h, None] * sh[:, None, :3]).reshape(-1, 3 * h)
        )
        l2_sum = zeros[:, 3 * h :].index_add(
            0, centre, (weights[:, h:, None] * sh[:, None, 3:]).reshape(-1, 5 * h)
        )
        return torch.cat([node_feats, vectors_sum * self.norm, l2_sum * self.norm], dim=-1)
