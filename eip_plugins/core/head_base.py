"""What every head shares beyond its own parameterisation (SPEC §1c): the invariant descriptors
of its input features, their per-element density (distance to the training atoms) and the
recalibration scale.
"""

from typing import Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from . import keys
from .feature_density import FeatureDensity
from .invariants import InvariantFeatures
from .recalibration import VarianceScale


class HeadBase(nn.Module):
    """Base of the three heads.

    Args:
        irreps_in: irreps of the backbone node features the head reads.
        num_species: number of species (elements / model types) of the per-element statistics.

        detach_backbone: while training (``self.training``), read detached node features and
            forces, so that the head's loss sends no gradient into the backbone (the
            ``"detached"`` force objective). In evaluation the inputs keep their graph: sigma
            stays differentiable with respect to positions (UDD bias forces).

    Submodules: ``invariants`` (:class:`InvariantFeatures`, D descriptors per atom), ``density``
    (:class:`FeatureDensity`), ``variance_scale`` (:class:`VarianceScale`).
    """

    detach_backbone: bool

    def __init__(self, irreps_in, num_species: int = 1, detach_backbone: bool = False):
        super().__init__()
        self.detach_backbone = bool(detach_backbone)
        self.init_density(irreps_in, num_species)

    def __setstate__(self, state) -> None:
        # heads pickled before the force objective existed trained the backbone through the NLL
        state.setdefault("detach_backbone", False)
        super().__setstate__(state)

    def backbone_inputs(self, node_feats: Tensor, forces: Tensor) -> Tuple[Tensor, Tensor]:
        """``(node_feats, forces)``, detached while training with ``detach_backbone``."""
        if self.training and self.detach_backbone:
            return node_feats.detach(), forces.detach()
        return node_feats, forces

    def init_density(self, irreps_in, num_species: int) -> None:
        """(Re)create the density and recalibration modules with empty statistics and c = 1."""
        if int(num_species) < 1:
            raise ValueError(f"invalid num_species={num_species!r}: must be >= 1")
        self.invariants = InvariantFeatures(irreps_in)
        self.density = FeatureDensity(int(num_species), self.invariants.dim)
        self.variance_scale = VarianceScale()

    def feature_distance_sq(self, node_feats: Tensor, species: Optional[Tensor]) -> Tensor:
        """r_i^2 (N,), the normalised squared Mahalanobis distance of each atom's descriptors to
        the training atoms of its species (mean 1 over them; 0 while no statistics are fitted).
        ``species`` (N,) int64, ``None`` means all atoms are species 0."""
        if species is None:
            species = torch.zeros(node_feats.shape[0], dtype=torch.long, device=node_feats.device)
        return self.density(self.invariants(node_feats), species)

    def distance_fields(
        self, distance_sq: Tensor, batch: Tensor, num_graphs: int
    ) -> Dict[str, Tensor]:
        """``forces_feature_distance`` (N,) = r_i and its per-structure mean and max."""
        distance = torch.sqrt(distance_sq)
        zeros = torch.zeros(num_graphs, dtype=distance.dtype, device=distance.device)
        total = zeros.index_add(0, batch, distance)
        count = zeros.index_add(0, batch, torch.ones_like(distance))
        maximum = zeros.scatter_reduce(0, batch, distance, reduce="amax", include_self=False)
        return {
            keys.FORCES_FEATURE_DISTANCE: distance,
            keys.FEATURE_DISTANCE: total / count.clamp_min(1.0),
            keys.FEATURE_DISTANCE_MAX: maximum,
        }
