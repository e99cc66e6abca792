"""Select the scalar and vector channels of a backbone's node features (e3nn layout)."""

import torch
from torch import Tensor

from ._e3nn import o3


def vector_channel_index(irreps_in: o3.Irreps) -> Tensor:
    """Flat indices of every 1o channel of ``irreps_in``, ordered (channel, xyz).

    Returns:
        (H * 3,) int64 index; ``feats[:, idx].reshape(N, H, 3)`` gives the vector features.

    Raises:
        ValueError: if ``irreps_in`` has no 1o irreps.
    """
    irreps_in = o3.Irreps(irreps_in)
    index = []
    for (_, ir), sl in zip(irreps_in, irreps_in.slices(), strict=True):
        if ir.l == 1 and ir.p == -1:
            index.extend(range(sl.start, sl.stop))
    if not index:
        raise ValueError(
            f"the evidential head needs vector (1o) node features, but the backbone's node "
            f"irreps are '{irreps_in}' (scalars only?). Use a backbone with l_max >= 1 features."
        )
    return torch.tensor(index, dtype=torch.long)


def count_irreps(irreps_in: o3.Irreps, degree: int, parity: int) -> int:
    """Total multiplicity of the irrep (l = degree, p = parity) in ``irreps_in``."""
    return sum(mul for mul, ir in o3.Irreps(irreps_in) if ir.l == degree and ir.p == parity)


def check_feature_dim(node_feats: Tensor, expected: int) -> None:
    """Raise ValueError unless node_feats is (N, expected)."""
    if node_feats.dim() != 2 or node_feats.shape[1] != expected:
        raise ValueError(
            "node_feats has shape "
            + str(list(node_feats.shape))
            + " but the head was built for (N, "
            + str(expected)
            + ") features"
        )
