"""The e2IP head: Normal-Inverse-Wishart with an equivariant SPD scale matrix (SPEC §1b)."""

from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from .config import HeadConfig
from .covariance_head import (
    TANGENT_OUTPUTS,
    TANGENT_UPPER_ONLY,
    EquivariantCovarianceHead,
    from_tangent_outputs,
    positive,
    tangent_outputs,
)
from .head_base import HeadBase
from .losses import niw_evidence_regularizer, niw_student_t_nll
from .outputs import uncertainty_fields
from .params import ForceUncertainty, NIWParams
from .recalibration import scale_niw
from .uncertainty import niw_uncertainty

_KAPPA_FLOOR = 1e-4


class EquivariantEvidentialHead(HeadBase):
    """e2IP head: (mu0, kappa, nu_w, Psi) per atom with Psi(R x) = R Psi(x) R^T.

    Density-aware evidence, bounded extrapolation and recalibration (SPEC §1c): the learned
    invariants (log scale and anisotropy of Psi, kappa_net, nu_w) are clamped to the range they
    covered on the training atoms (:class:`~eip_plugins.core.output_range.OutputRange`),
    kappa = hypot(kappa_net / (1 + a r^(2p)), tr(E[Sigma]) / (3 V_z)) with r the invariant
    feature distance of the atom and V_z the force prior of its element (so Var[mu] grows with r
    up to V_z per component, E[Sigma] does not, and equivariance is kept), and Psi = c Psi_net
    (E[Sigma] in kappa's prior term is the recalibrated one: V_z bounds the variance the model
    reports). All are identities until fitted.

    Args:
        irreps_in: irreps of the backbone node features (without 1o channels the head builds
            geometric ones, see :class:`HeadBase`).
        config: head hyperparameters (``kind == "e2ip"``).
        num_species: number of species of the per-element feature statistics.

    Forward:
        node_feats (N, irreps_in.dim), forces (N, 3) eV/A, species (N,) int64 (optional) ->
        :class:`NIWParams`.
    """

    kind: str = "e2ip"
    bounded_outputs = (*TANGENT_OUTPUTS, "kappa", "nu_w")
    bounded_upper_only = TANGENT_UPPER_ONLY

    def build(self, config: HeadConfig) -> None:
        self.covariance = EquivariantCovarianceHead(
            self.head_irreps,
            hidden=config.hidden,
            n_scalars=2,
            psi0=config.psi0,
            learn_psi0=config.learn_psi0,
            max_log_scale=config.max_log_scale,
        )
        self.nu_w_floor = float(config.nu_w_floor)
        self.kappa_floor = _KAPPA_FLOOR  # TorchScript cannot close over module-level floats
        self.lam = float(config.lam)

    @torch.jit.export
    def forward_with_distance(
        self,
        node_feats: Tensor,
        forces: Tensor,
        species: Optional[Tensor] = None,
        edge_index: Optional[Tensor] = None,
        edge_vectors: Optional[Tensor] = None,
    ) -> Tuple[NIWParams, Tensor]:
        """The parameters and the squared feature distance d^2 (N,) they were built with."""
        node_feats, forces = self.backbone_inputs(node_feats, forces)
        distance_sq, feats = self.distance_and_features(
            node_feats, species, edge_index, edge_vectors
        )
        s, t, scalars = self.covariance.tangent(feats)
        invariants = tangent_outputs(s, t, scalars)
        s, t, scalars = from_tangent_outputs(self.output_range(invariants, species), invariants, t)
        psi, psi_inv, log_det = self.covariance.spd(s, t)
        kappa = positive(scalars[:, 0], self.kappa_floor)
        kappa = kappa * self.density.evidence_factor(distance_sq)
        nu_w = positive(scalars[:, 1], self.nu_w_floor)
        params = NIWParams(forces, kappa, nu_w, psi, psi_inv, log_det)
        p = scale_niw(params, self.variance_scale.scale)
        # the force prior, on the recalibrated variance (V_z is absolute, (eV/A)^2), in
        # quadrature: 1/Var[mu]^2 = 1/Var[mu]_raw^2 + 1/V_z^2 along E[Sigma]
        mean_aleatoric = p.psi.diagonal(dim1=-2, dim2=-1).mean(-1) / (nu_w - 4.0)  # (N,)
        kappa = torch.hypot(kappa, self.prior_evidence(mean_aleatoric, species))
        return NIWParams(forces, kappa, nu_w, p.psi, p.psi_inv, p.log_det_psi), distance_sq

    def force_loss(self, params: NIWParams, forces_ref: Tensor) -> Tensor:
        """Per-atom force loss, Student-t NLL + lambda Reg: (N,)."""
        nll = niw_student_t_nll(params, forces_ref)
        return nll + self.lam * niw_evidence_regularizer(params, forces_ref)

    @torch.jit.export
    def uncertainty(self, params: NIWParams) -> ForceUncertainty:
        return niw_uncertainty(params)

    @torch.jit.export
    def output_fields(self, params: NIWParams) -> Dict[str, Tensor]:
        return {"e2ip_kappa": params.kappa, "e2ip_nu_w": params.nu_w, "e2ip_psi": params.psi}

    @torch.jit.export
    def fields(
        self, params: NIWParams, batch: Tensor, num_graphs: int, distance_sq: Tensor
    ) -> Dict[str, Tensor]:
        """Uncertainty fields (:func:`uncertainty_fields`), the raw evidential parameters and the
        feature distance fields (:meth:`distance_fields`)."""
        out = uncertainty_fields(self.uncertainty(params), batch, num_graphs)
        out.update(self.output_fields(params))
        out.update(self.distance_fields(distance_sq, batch, num_graphs))
        return out
