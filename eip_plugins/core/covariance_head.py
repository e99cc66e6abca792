"""Equivariant SPD 3x3 matrices per atom from an l_max = 1 feature set (SPEC §1b).

The l = 2 part of the tangent vector is built from the vector features by the symmetric tensor
product of each 1o channel with itself, v (x) v -> 0e + 2e (the traceless part of v v^T, and
|v|^2). This needs no edge information: it works on any 1o features, the backbone's (MACE and
NequIP with l_max >= 1) or those the geometric front end builds (:mod:`.geometric_features`); 2e
features, when present, are used as well. Invariant scalars (0e features and |v|^2) pass through
an MLP that outputs the isotropic log scale s, one invariant gate per l = 2 channel, and any extra
scalars a head needs (kappa, nu_w). Gating 2e channels by invariants keeps T equivariant.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._e3nn import o3
from .irreps_features import check_feature_dim, count_irreps, vector_channel_index
from .spd import bound_log_scale, spd_from_tangent, symmetric_traceless_basis


class EquivariantCovarianceHead(nn.Module):
    """Per-atom SPD matrix Psi = psi0 exp(s I + T) and invariant scalars.

    Args:
        irreps_in: irreps of the backbone node features (must contain 1o).
        hidden: channel width H.
        n_scalars: number of extra invariant outputs.
        psi0: initial psi0, (eV/A)^2.
        learn_psi0: train log psi0 (else a buffer).
        max_log_scale: bound of |s| and |T|_F (see :func:`bound_log_scale`).

    Forward:
        node_feats (N, irreps_in.dim) -> scalars (N, n_scalars), psi (N, 3, 3),
        psi_inv (N, 3, 3), log_det_psi (N,).
    """

    def __init__(
        self,
        irreps_in,
        hidden: int,
        n_scalars: int,
        psi0: float = 1.0,
        learn_psi0: bool = True,
        max_log_scale: float = 10.0,
    ):
        super().__init__()
        irreps_in = o3.Irreps(irreps_in)
        vector_channel_index(irreps_in)  # raises a clear ValueError without 1o features
        self.irreps_in = str(irreps_in)
        self.feature_dim = irreps_in.dim
        self.hidden = hidden
        self.n_scalars = n_scalars
        self.max_log_scale = float(max_log_scale)
        self.has_scalars = count_irreps(irreps_in, 0, 1) > 0
        self.has_l2 = count_irreps(irreps_in, 2, 1) > 0

        mid = f"{hidden}x0e + {hidden}x1o" if self.has_scalars else f"{hidden}x1o"
        if self.has_l2:
            mid += f" + {hidden}x2e"
        self.linear_in = o3.Linear(irreps_in, o3.Irreps(mid))
        self.square = o3.ElementwiseTensorProduct(f"{hidden}x1o", f"{hidden}x1o", ["0e", "2e"])
        n_l2 = hidden * (2 if self.has_l2 else 1)
        n_inv = hidden * (2 if self.has_scalars else 1)
        self.mlp = nn.Sequential(
            nn.Linear(n_inv, hidden), nn.SiLU(), nn.Linear(hidden, 1 + n_l2 + n_scalars)
        )
        with torch.no_grad():  # start near Psi = psi0 I
            self.mlp[-1].weight.mul_(0.1)
            self.mlp[-1].bias.zero_()
        self.n_l2 = n_l2
        self.register_buffer("l2_to_cartesian", symmetric_traceless_basis(), persistent=False)
        log_psi0 = torch.tensor(math.log(psi0))
        if learn_psi0:
            self.log_psi0 = nn.Parameter(log_psi0)
        else:
            self.register_buffer("log_psi0", log_psi0)

    def set_psi0(self, psi0: float) -> None:
        """Set psi0 ((eV/A)^2), e.g. from the variance of the training forces."""
        if not psi0 > 0.0:
            raise ValueError(f"invalid psi0={psi0!r}: must be > 0 (eV/A)^2")
        with torch.no_grad():
            self.log_psi0.fill_(math.log(psi0))

    def forward(self, node_feats: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        s, t, scalars = self.tangent(node_feats)
        psi, psi_inv, log_det = self.spd(s, t)
        return scalars, psi, psi_inv, log_det

    def tangent(self, node_feats: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The bounded tangent vector and the extra scalars: s (N,), t (N, 5) (the l = 2
        coefficients of T in e3nn's basis), scalars (N, n_scalars)."""
        check_feature_dim(node_feats, self.feature_dim)
        n = node_feats.shape[0]
        h = self.hidden
        mid = self.linear_in(node_feats)
        offset = 0
        invariants = []
        if self.has_scalars:
            invariants.append(mid[:, :h])
            offset = h
        vectors = mid[:, offset : offset + 3 * h]
        sq = self.square(vectors, vectors)  # (N, h [0e] + 5h [2e])
        invariants.append(sq[:, :h])
        l2 = [sq[:, h:].reshape(n, h, 5)]
        if self.has_l2:
            l2.append(mid[:, offset + 3 * h :].reshape(n, h, 5))
        l2_channels = torch.cat(l2, dim=1)  # (N, n_l2, 5)

        out = self.mlp(torch.cat(invariants, dim=-1))
        s = out[:, 0]
        gates = out[:, 1 : 1 + self.n_l2]
        scalars = out[:, 1 + self.n_l2 :]
        # t_nk = sum_c gates_nc l2_nck / sqrt(n_l2) (a matrix product: einsum's per-call planning
        # costs more than the arithmetic on molecule-sized inputs)
        t = torch.bmm(gates.unsqueeze(1), l2_channels).squeeze(1) / math.sqrt(self.n_l2)
        s, t = bound_log_scale(s, t, self.max_log_scale)
        return s, t, scalars

    def spd(self, s: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Psi = psi0 exp(s I + T) (N, 3, 3), its inverse and log det (N,) from s (N,), t (N, 5)."""
        n = s.shape[0]
        traceless = (t @ self.l2_to_cartesian.to(t.dtype).reshape(5, 9)).reshape(n, 3, 3)
        return spd_from_tangent(s, traceless, self.log_psi0.to(t.dtype))


#: the invariant outputs of :meth:`EquivariantCovarianceHead.tangent` an output range bounds
#: (:func:`tangent_outputs`): the isotropic log scale s and the anisotropy |t|, bounded from
#: above only
TANGENT_OUTPUTS = ("log_scale", "anisotropy")
TANGENT_UPPER_ONLY = ("anisotropy",)


def tangent_outputs(s: Tensor, t: Tensor, scalars: Tensor) -> Tensor:
    """The invariants [s, |t|, scalars...] (N, 2 + n_scalars) of a tangent vector s (N,),
    t (N, 5) and the extra scalars (N, n_scalars)."""
    norm = torch.sqrt((t * t).sum(-1) + 1e-12)
    return torch.cat([s.unsqueeze(-1), norm.unsqueeze(-1), scalars], dim=-1)


def from_tangent_outputs(
    bounded: Tensor, unbounded: Tensor, t: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """(s, t, scalars) from the invariants of :func:`tangent_outputs` before (``unbounded``) and
    after (``bounded``) an output range, (N, 2 + n) each, and the original t (N, 5): t is scaled
    down (along itself, so equivariance is kept) where its norm was bounded, and returned as it
    is elsewhere."""
    norm, bounded_norm = unbounded[:, 1], bounded[:, 1]
    t = torch.where((bounded_norm < norm).unsqueeze(-1), t * (bounded_norm / norm).unsqueeze(-1), t)
    return bounded[:, 0], t, bounded[:, 2:]


def positive(x: Tensor, floor: float) -> Tensor:
    """softplus(x) + floor, elementwise."""
    return F.softplus(x) + floor
