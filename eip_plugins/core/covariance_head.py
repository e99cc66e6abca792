"""Equivariant SPD 3x3 matrices per atom from an l_max = 1 feature set (SPEC §1b).

The l = 2 part of the tangent vector is built from the vector features by the symmetric tensor
product of each 1o channel with itself, v (x) v -> 0e + 2e (the traceless part of v v^T, and
|v|^2). This needs no edge information: it works on any 1o features, the backbone's (MACE and
NequIP with l_max >= 1) or those the geometric front end builds (:mod:`.geometric_features`); 2e
features, when present, are used as well. Invariant scalars (0e features and |v|^2) pass through
an MLP that outputs the isotropic log scale s, one invariant gate per l = 2 channel, and any extra
scalars a head needs (kappa, nu_w). Gating 2e channels by invariants keeps T equivariant.

The e3nn modules ``linear_in`` and ``square`` define the operation and ``linear_in`` owns its
weights (state dicts, checkpoints and optimisers keep e3nn's layout); the forward pass computes
both as a few matrix products (:mod:`.closed_forms`): the same numbers (tested against e3nn's
forward) in 132 tensor operations instead of 266 on MACE's features.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._e3nn import o3
from .closed_forms import IrrepBlockLinear, vector_square_basis
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
        self.build_closed_forms()
        log_psi0 = torch.tensor(math.log(psi0))
        if learn_psi0:
            self.log_psi0 = nn.Parameter(log_psi0)
        else:
            self.register_buffer("log_psi0", log_psi0)

    def build_closed_forms(self) -> None:
        """The matrix-product forms of ``linear_in`` (one block per output irrep: 0e, 1o, 2e) and
        of ``square`` (:mod:`.closed_forms`), non-persistent (rebuilt from the irreps)."""
        blocks = iter(range(3))
        self.linear_scalars = (
            IrrepBlockLinear(self.linear_in, next(blocks)) if self.has_scalars else None
        )
        self.linear_vectors = IrrepBlockLinear(self.linear_in, next(blocks))
        self.linear_l2 = IrrepBlockLinear(self.linear_in, next(blocks)) if self.has_l2 else None
        square = vector_square_basis()  # (9, 1 [0e] + 5 [2e])
        self.register_buffer("square_0e_basis", square[:, 0].contiguous(), persistent=False)
        self.register_buffer("square_2e_basis", square[:, 1:].contiguous(), persistent=False)

    def __setstate__(self, state) -> None:
        # pickled before the closed forms existed: build them from the e3nn modules
        super().__setstate__(state)
        if "linear_vectors" not in self._modules:
            self.build_closed_forms()
            self.to(self.log_psi0)  # the new buffers in the head's dtype and on its device

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
        weight = self.linear_in.weight
        invariants = []
        if self.linear_scalars is not None:
            invariants.append(self.linear_scalars(node_feats, weight).reshape(n, h))
        vectors = self.linear_vectors(node_feats, weight)  # (N, h, 3)
        outer = (vectors.unsqueeze(-1) * vectors.unsqueeze(-2)).reshape(n, h, 9)
        # the square v (x) v -> 0e + 2e of every channel is (v v^T) : C (closed_forms)
        invariants.append(outer @ self.square_0e_basis.to(outer.dtype))  # (N, h)
        out = self.mlp(torch.cat(invariants, dim=-1))
        s = out[:, 0]
        gates = out[:, 1 : 1 + self.n_l2]
        scalars = out[:, 1 + self.n_l2 :]
        # t_nk = sum_c gates_nc l2_nck / sqrt(n_l2), the square's channels contracted before
        # their 2e basis (matrix products: einsum's per-call planning and the concatenation of
        # strided channels cost more than the arithmetic on molecule-sized inputs)
        gated_outer = torch.bmm(gates[:, :h].unsqueeze(1), outer).reshape(n, 9)
        t = gated_outer @ self.square_2e_basis.to(outer.dtype)  # (N, 5)
        if self.linear_l2 is not None:
            l2 = self.linear_l2(node_feats, weight)  # (N, h, 5)
            t = t + torch.bmm(gates[:, h:].unsqueeze(1), l2).reshape(n, 5)
        t = t / math.sqrt(self.n_l2)
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
