"""The MVE baseline: a heteroscedastic Gaussian with the same equivariant SPD covariance."""

from typing import Dict

from torch import Tensor, nn

from .config import HeadConfig
from .covariance_head import EquivariantCovarianceHead
from .losses import gaussian_force_nll
from .outputs import uncertainty_fields
from .params import ForceUncertainty, GaussianParams
from .uncertainty import gaussian_uncertainty


class EquivariantGaussianHead(nn.Module):
    """MVE head: N(F_pred, Sigma) per atom with Sigma(R x) = R Sigma(x) R^T; no evidential prior.

    Forward:
        node_feats (N, irreps_in.dim), forces (N, 3) eV/A -> :class:`GaussianParams`.
    """

    kind: str = "mve"

    def __init__(self, irreps_in, config: HeadConfig):
        super().__init__()
        self.covariance = EquivariantCovarianceHead(
            irreps_in,
            hidden=config.hidden,
            n_scalars=0,
            psi0=config.psi0,
            learn_psi0=config.learn_psi0,
            max_log_scale=config.max_log_scale,
        )
        self.irreps_in = self.covariance.irreps_in

    def forward(self, node_feats: Tensor, forces: Tensor) -> GaussianParams:
        _, cov, cov_inv, log_det = self.covariance(node_feats)
        return GaussianParams(forces, cov, cov_inv, log_det)

    def force_loss(self, params: GaussianParams, forces_ref: Tensor) -> Tensor:
        """Per-atom Gaussian NLL: (N,)."""
        return gaussian_force_nll(params, forces_ref)

    def uncertainty(self, params: GaussianParams) -> ForceUncertainty:
        return gaussian_uncertainty(params)

    def output_fields(self, params: GaussianParams) -> Dict[str, Tensor]:
        return {"mve_cov": params.cov}

    def fields(self, params: GaussianParams, batch: Tensor, num_graphs: int) -> Dict[str, Tensor]:
        """Uncertainty fields (:func:`uncertainty_fields`) plus the raw evidential parameters."""
        out = uncertainty_fields(self.uncertainty(params), batch, num_graphs)
        out.update(self.output_fields(params))
        return out
