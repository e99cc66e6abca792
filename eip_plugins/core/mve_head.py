"""The MVE baseline: a heteroscedastic Gaussian with the same equivariant SPD covariance."""

from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from .config import HeadConfig
from .covariance_head import (
    TANGENT_OUTPUTS,
    TANGENT_UPPER_ONLY,
    EquivariantCovarianceHead,
    from_tangent_outputs,
    tangent_outputs,
)
from .head_base import HeadBase
from .losses import gaussian_force_nll
from .outputs import uncertainty_fields
from .params import ForceUncertainty, GaussianParams
from .recalibration import scale_gaussian
from .uncertainty import gaussian_uncertainty


class EquivariantGaussianHead(HeadBase):
    """MVE head: N(F_pred, Sigma) per atom with Sigma(R x) = R Sigma(x) R^T; no evidential prior.

    It has no epistemic part, so the feature distance is reported but does not change Sigma
    (it is the aleatoric-only baseline; examples/benchmark/README.md measures what scaling Sigma
    by the density factor would do); the log scale and anisotropy of Sigma are clamped to the range
    they covered on the training atoms (:class:`~eip_plugins.core.output_range.OutputRange`), and
    recalibration gives Sigma = c Sigma_net.

    Forward:
        node_feats (N, irreps_in.dim), forces (N, 3) eV/A, species (N,) int64 (optional) ->
        :class:`GaussianParams`.
    """

    kind: str = "mve"
    bounded_outputs = TANGENT_OUTPUTS
    bounded_upper_only = TANGENT_UPPER_ONLY

    def build(self, config: HeadConfig) -> None:
        self.covariance = EquivariantCovarianceHead(
            self.head_irreps,
            hidden=config.hidden,
            n_scalars=0,
            psi0=config.psi0,
            learn_psi0=config.learn_psi0,
            max_log_scale=config.max_log_scale,
        )

    @torch.jit.export
    def forward_with_distance(
        self,
        node_feats: Tensor,
        forces: Tensor,
        species: Optional[Tensor] = None,
        edge_index: Optional[Tensor] = None,
        edge_vectors: Optional[Tensor] = None,
    ) -> Tuple[GaussianParams, Tensor]:
        """The parameters and the squared feature distance d^2 (N,)."""
        node_feats, forces = self.backbone_inputs(node_feats, forces)
        distance_sq, feats = self.distance_and_features(
            node_feats, species, edge_index, edge_vectors
        )
        s, t, scalars = self.covariance.tangent(feats)
        invariants = tangent_outputs(s, t, scalars)
        s, t, _ = from_tangent_outputs(self.output_range(invariants, species), invariants, t)
        cov, cov_inv, log_det = self.covariance.spd(s, t)
        params = GaussianParams(forces, cov, cov_inv, log_det)
        return scale_gaussian(params, self.variance_scale.scale), distance_sq

    def force_loss(self, params: GaussianParams, forces_ref: Tensor) -> Tensor:
        """Per-atom Gaussian NLL: (N,)."""
        return gaussian_force_nll(params, forces_ref)

    @torch.jit.export
    def uncertainty(self, params: GaussianParams) -> ForceUncertainty:
        return gaussian_uncertainty(params)

    @torch.jit.export
    def output_fields(self, params: GaussianParams) -> Dict[str, Tensor]:
        return {"mve_cov": params.cov}

    @torch.jit.export
    def fields(
        self, params: GaussianParams, batch: Tensor, num_graphs: int, distance_sq: Tensor
    ) -> Dict[str, Tensor]:
        """Uncertainty fields, the raw parameters and the feature distance fields."""
        out = uncertainty_fields(self.uncertainty(params), batch, num_graphs)
        out.update(self.output_fields(params))
        out.update(self.distance_fields(distance_sq, batch, num_graphs))
        return out
