"""Rotation-invariant per-atom descriptors of a backbone's node features (SPEC §1c).

h_i = [every 0e channel of x_i, the squared norm |x_i,c|^2 of every other channel c]. For the
usual ``Cx0e + Cx1o`` features this is D = 2C numbers: the scalars and the |v|^2 of the vectors,
the same invariants the e2ip head's MLP reads. Under a rotation R (and, for 0o/1e channels, an
inversion) the norms do not change, so h and every distance built on it are invariant.
"""

import torch
from torch import Tensor, nn

from ._e3nn import o3
from .irreps_features import check_feature_dim


class InvariantFeatures(nn.Module):
    """x (N, irreps_in.dim) -> h (N, D) with D = number of channels (multiplicities) of irreps_in.

    Implemented as two fixed linear maps, h = x S + (x * x) P, with S selecting the 0e components
    and P summing the squared components of each other channel (TorchScript and ``torch.export``
    friendly: no per-irrep Python loop in ``forward``).
    """

    def __init__(self, irreps_in):
        super().__init__()
        irreps_in = o3.Irreps(irreps_in)
        self.feature_dim = irreps_in.dim
        self.dim = sum(mul for mul, _ in irreps_in)
        select = torch.zeros(irreps_in.dim, self.dim, dtype=torch.float64)
        pool = torch.zeros(irreps_in.dim, self.dim, dtype=torch.float64)
        column = 0
        for (mul, ir), sl in zip(irreps_in, irreps_in.slices(), strict=True):
            for c in range(mul):
                start = sl.start + c * ir.dim
                if ir.l == 0 and ir.p == 1:
                    select[start, column] = 1.0
                else:
                    pool[start : start + ir.dim, column] = 1.0
                column += 1
        self.register_buffer("select", select, persistent=False)
        self.register_buffer("pool", pool, persistent=False)

    def forward(self, node_feats: Tensor) -> Tensor:
        check_feature_dim(node_feats, self.feature_dim)
        select = self.select.to(node_feats.dtype)
        pool = self.pool.to(node_feats.dtype)
        return node_feats @ select + (node_feats * node_feats) @ pool
