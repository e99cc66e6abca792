"""The eIP head: per-Cartesian-component Normal-Inverse-Gamma parameters (SPEC §1a).

This reproduces the eIP paper's reference head, which is deliberately *not* rotation-equivariant:
a small MLP acts on each Cartesian row of the vector features independently.
"""

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._e3nn import o3
from .config import HeadConfig
from .head_base import HeadBase
from .irreps_features import check_feature_dim, vector_channel_index
from .losses import evidential_force_nll, evidential_force_regularizer
from .outputs import uncertainty_fields
from .params import ForceUncertainty, NIGParams
from .recalibration import scale_nig
from .uncertainty import nig_uncertainty

_ALPHA_FLOOR = 1e-5
_NU_FLOOR = 1e-5
_BETA_FLOOR = 1e-6


class ShiftedSoftplus(nn.Module):
    """softplus(x) - log 2, zero at the origin."""

    def forward(self, x: Tensor) -> Tensor:
        return F.softplus(x) - 0.6931471805599453


class ComponentwiseEvidentialHead(HeadBase):
    """eIP head: NIG parameters (gamma, nu, alpha, beta) per atom and Cartesian component.

    Density-aware evidence, bounded extrapolation and recalibration (SPEC §1c): the MLP's nine
    raw outputs (alpha, beta, nu per component, before their softplus) are clamped to the range
    they covered on the training atoms (:class:`~eip_plugins.core.output_range.OutputRange`),
    beta = c beta_net, nu = hypot(nu_net / (1 + a r^(2p)), beta / ((alpha - 1) V_z)) per
    component (V_z the force prior of the atom's element: the epistemic variance grows with r up
    to V_z); identities until fitted.

    Args:
        irreps_in: irreps of the backbone node features; the 1o channels of ``head_irreps``
            (the backbone's, or the geometric ones, see :class:`HeadBase`) are used.
        config: head hyperparameters (``kind == "eip"``).
        num_species: number of species of the per-element feature statistics.

    Forward:
        node_feats (N, irreps_in.dim), forces (N, 3) eV/A, species (N,) int64 (optional) ->
        :class:`NIGParams`, each (N, 3).
    """

    kind: str = "eip"
    bounded_outputs = tuple(f"{p}_{c}" for c in "xyz" for p in ("alpha", "beta", "nu"))

    def build(self, config: HeadConfig) -> None:
        self.feature_dim = o3.Irreps(self.irreps_in).dim
        self.register_buffer(
            "vector_index", vector_channel_index(self.head_irreps), persistent=False
        )
        n_vec = self.vector_index.numel() // 3
        self.mlp = nn.Sequential(
            nn.Linear(n_vec, config.hidden), ShiftedSoftplus(), nn.Linear(config.hidden, 3)
        )
        self.quantile = float(config.quantile)
        self.alpha_floor, self.beta_floor, self.nu_floor = _ALPHA_FLOOR, _BETA_FLOOR, _NU_FLOOR
        self.lam = float(config.lam)

    @torch.jit.export
    def forward_with_distance(
        self,
        node_feats: Tensor,
        forces: Tensor,
        species: Optional[Tensor] = None,
        edge_index: Optional[Tensor] = None,
        edge_vectors: Optional[Tensor] = None,
    ) -> Tuple[NIGParams, Tensor]:
        """The parameters and the squared feature distance d^2 (N,) they were built with."""
        node_feats, forces = self.backbone_inputs(node_feats, forces)
        check_feature_dim(node_feats, self.feature_dim)
        distance_sq, feats = self.distance_and_features(
            node_feats, species, edge_index, edge_vectors
        )
        n = feats.shape[0]
        vectors = feats[:, self.vector_index].reshape(n, -1, 3).transpose(1, 2)  # (N, 3, H)
        raw = self.mlp(vectors)  # (N, 3 components, 3 outputs)
        raw = self.output_range(raw.reshape(n, 9), species).reshape(n, 3, 3)
        alpha = F.softplus(raw[..., 0]) + 1.0 + self.alpha_floor
        beta = F.softplus(raw[..., 1]) + self.beta_floor
        nu = F.softplus(raw[..., 2]) + self.nu_floor
        nu = nu * self.density.evidence_factor(distance_sq)[:, None]
        p = scale_nig(NIGParams(forces, nu, alpha, beta), self.variance_scale.scale)
        # the force prior, on the recalibrated variance (V_z is absolute, (eV/A)^2), in
        # quadrature: 1 / Var^2 = 1 / Var_raw^2 + 1 / V_z^2 per component
        nu = torch.hypot(nu, self.prior_evidence(p.beta / (alpha - 1.0), species))
        return NIGParams(forces, nu, alpha, p.beta), distance_sq

    def force_loss(self, params: NIGParams, forces_ref: Tensor) -> Tensor:
        """Per-atom force loss, NLL + lambda Reg summed over x, y, z: (N,)."""
        nll = evidential_force_nll(params, forces_ref, self.quantile)
        reg = evidential_force_regularizer(params, forces_ref, self.quantile)
        return (nll + self.lam * reg).sum(-1)

    @torch.jit.export
    def uncertainty(self, params: NIGParams) -> ForceUncertainty:
        return nig_uncertainty(params)

    @torch.jit.export
    def output_fields(self, params: NIGParams) -> Dict[str, Tensor]:
        """Raw evidential parameters under the names of :mod:`eip_plugins.core.keys`."""
        return {"eip_nu": params.nu, "eip_alpha": params.alpha, "eip_beta": params.beta}

    @torch.jit.export
    def fields(
        self, params: NIGParams, batch: Tensor, num_graphs: int, distance_sq: Tensor
    ) -> Dict[str, Tensor]:
        """Uncertainty fields, the raw evidential parameters and the feature distance fields."""
        out = uncertainty_fields(self.uncertainty(params), batch, num_graphs)
        out.update(self.output_fields(params))
        out.update(self.distance_fields(distance_sq, batch, num_graphs))
        return out
