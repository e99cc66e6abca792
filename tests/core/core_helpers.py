"""Helpers of the core suite (a uniquely named module: ``conftest`` names clash across suites)."""

import math

import torch

from eip_plugins.core import HeadConfig, build_head
from eip_plugins.core._e3nn import o3


class ToyBackbone(torch.nn.Module):
    """A tiny E(3)-equivariant featuriser: positions (N, 3) -> node features "Kx0e + Kx1o".

    h_i = sum_j exp(-a_k r_ij^2) [1, r_ij_hat] over all other atoms j, with K Gaussian widths.
    Translation invariant, permutation equivariant and rotation equivariant by construction.
    """

    def __init__(self, k: int = 6):
        super().__init__()
        self.register_buffer("widths", torch.linspace(0.2, 2.0, k, dtype=torch.float64))
        self.irreps_out = o3.Irreps(f"{k}x0e + {k}x1o")

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        rij = positions[None, :, :] - positions[:, None, :]  # (N, N, 3)
        d2 = (rij * rij).sum(-1)
        mask = ~torch.eye(len(positions), dtype=torch.bool)
        radial = torch.exp(-self.widths * d2[..., None]) * mask[..., None]  # (N, N, K)
        unit = rij / torch.sqrt(d2 + (~mask).to(d2.dtype))[..., None]
        scalars = radial.sum(1)  # (N, K)
        vectors = torch.einsum("ijk,ijc->ikc", radial, unit)  # (N, K, 3)
        return torch.cat([scalars, vectors.reshape(len(positions), -1)], dim=-1)


def radius_graph(positions: torch.Tensor, r_max: float):
    """All pairs closer than ``r_max`` (no self pairs): edge_index (2, E) [centre, neighbour],
    edge_vectors (E, 3) = r_neighbour - r_centre, keeping the graph of ``positions``."""
    distances = torch.cdist(positions.detach(), positions.detach())
    mask = (distances < r_max) & ~torch.eye(len(positions), dtype=torch.bool)
    edge_index = mask.nonzero().T.contiguous()
    return edge_index, positions[edge_index[1]] - positions[edge_index[0]]


def randomised(module: torch.nn.Module, seed: int = 0, std: float = 1.0) -> torch.nn.Module:
    """``module`` in float64 with every parameter drawn from N(0, std^2) (seeded)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, std)
    return module.double()


def make_head(
    kind: str,
    irreps,
    seed: int = 0,
    num_species: int = 1,
    r_max: float | None = None,
    avg_num_neighbors: float = 1.0,
    **kwargs,
):
    """A head with non-trivial (randomised, larger than default) output-layer weights."""
    torch.manual_seed(seed)
    config = HeadConfig(kind=kind, hidden=8, **kwargs)
    head = build_head(config, irreps, num_species, r_max, avg_num_neighbors).double()
    with torch.no_grad():
        for p in head.parameters():
            if p.dim() > 0:
                p.normal_(0.0, 1.0 / math.sqrt(max(1, p.shape[-1])))
    return head


def fit_random_statistics(head, num_species: int = 1, n: int = 200, seed: int = 5) -> None:
    """Give ``head`` per-species feature statistics of random features (as a training set
    would): r > 0 for new atoms, r^2 with mean 1 over these."""
    from eip_plugins.core import FeatureStatistics

    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(n, head.invariants.feature_dim, generator=g, dtype=torch.float64)
    species = torch.arange(n) % num_species
    stats = FeatureStatistics(num_species, head.density.dim)
    stats.update(head.invariants(feats), species)
    head.density.load_statistics(stats.finalize())


def output_range_inputs(head, *head_inputs) -> torch.Tensor:
    """What enters ``head.output_range`` (its forward input, (N, K)) when ``head(*head_inputs)``
    runs without gradients, recorded by a forward hook."""
    seen = []
    handle = head.output_range.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    try:
        with torch.no_grad():
            head(*head_inputs)
    finally:
        handle.remove()
    return seen[0]


def fit_narrow_output_range(head, *head_inputs) -> None:
    """Give ``head`` an output range of the middle half (25th to 75th percentile) of its own
    outputs on ``head_inputs`` (the arguments of ``head(...)``), the same for every species, so
    that about half of these outputs are clamped from below and above."""
    head.output_range.reset()
    values = output_range_inputs(head, *head_inputs).double()
    lower, upper = values.quantile(0.25, dim=0), values.quantile(0.75, dim=0)
    z = head.output_range.num_species
    head.output_range.load_range(lower.expand(z, -1), upper.expand(z, -1))
