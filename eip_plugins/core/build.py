"""Construct a head from its configuration."""

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


def build_head(config: HeadConfig, irreps_in, num_species: int = 1) -> nn.Module:
    """Build the head named by ``config.kind`` reading node features of irreps ``irreps_in``.

    Every head has the same interface:

    - ``head(node_feats (N, irreps_in.dim), forces (N, 3), species (N,)) -> params`` (a
      NamedTuple); ``head.forward_with_distance(...) -> (params, d^2 (N,))``;
    - ``head.force_loss(params, forces_ref (N, 3)) -> (N,)`` per-atom force loss;
    - ``head.uncertainty(params) -> ForceUncertainty``;
    - ``head.fields(params, batch (N,), num_graphs, d^2 (N,)) -> Dict[str, Tensor]`` output
      fields;
    - ``head.density`` (per-element feature statistics, :mod:`.feature_density`) and
      ``head.variance_scale`` (recalibration, :mod:`.recalibration`), both empty until fitted.

    ``num_species``: species (elements or model types, indices 0..num_species-1) of the
    per-element feature statistics.
    """
    return HEAD_CLASSES[config.kind](irreps_in, config, num_species)
