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


def build_head(config: HeadConfig, irreps_in) -> nn.Module:
    """Build the head named by ``config.kind`` reading node features of irreps ``irreps_in``.

    Every head has the same interface:

    - ``head(node_feats (N, irreps_in.dim), forces (N, 3)) -> params`` (a NamedTuple);
    - ``head.force_loss(params, forces_ref (N, 3)) -> (N,)`` per-atom force loss;
    - ``head.uncertainty(params) -> ForceUncertainty``;
    - ``head.fields(params, batch (N,), num_graphs) -> Dict[str, Tensor]`` output fields.
    """
    return HEAD_CLASSES[config.kind](irreps_in, config)
