"""Construct a head from its configuration."""

from __future__ import annotations

from torch import nn

from .config import HeadConfig
from .e2ip_head import EquivariantEvidentialHead
from .eip_head import ComponentwiseEvidentialHead
from .mve_head import EquivariantGaussianHead

HEAD_CLASSES = {
    "eip": ComponentwiseEvidentialHead,
    "e2ip": EquivariantEvidentialHead,
    "mve": EquivariantGaussianHead,
}


def build_head(
    config: HeadConfig,
    irreps_in,
    num_species: int = 1,
    r_max: float | None = None,
    avg_num_neighbors: float = 1.0,
) -> nn.Module:
    """Build the head named by ``config.kind`` reading node features of irreps ``irreps_in``.

    Every head has the same interface:

    - ``head(node_feats (N, irreps_in.dim), forces (N, 3), species (N,), edge_index (2, E),
      edge_vectors (E, 3)) -> params`` (a NamedTuple; the edges, [centre, neighbour] and
      r_neighbour - r_centre in A, are needed only when ``head.geometry`` is set); ``head.forward_with_distance(...) -> (params, d^2 (N,))``;
    - ``head.force_loss(params, forces_ref (N, 3)) -> (N,)`` per-atom force loss;
    - ``head.uncertainty(params) -> ForceUncertainty``;
    - ``head.fields(params, batch (N,), num_graphs, d^2 (N,)) -> Dict[str, Tensor]`` output
      fields;
    - ``head.density`` (per-element feature statistics, :mod:`.feature_density`),
      ``head.output_range`` (the training range of the learned outputs, :mod:`.output_range`)
      and ``head.variance_scale`` (recalibration, :mod:`.recalibration`), all empty until
      fitted.

    ``num_species``: species (elements or model types, indices 0..num_species-1) of the
    per-element feature statistics. ``r_max`` (A) and ``avg_num_neighbors``: the backbone's
    cutoff and mean neighbour count, used when the head builds geometric vector features
    (backbones without 1o features, or ``config.geometric_features == "always"``; see
    :func:`~eip_plugins.core.head_base.reads_geometry`).
    """
    return HEAD_CLASSES[config.kind](irreps_in, config, num_species, r_max, avg_num_neighbors)
