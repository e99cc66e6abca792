"""What every head shares beyond its own parameterisation (SPEC §1c): the invariant descriptors
of its input features, their per-element density (distance to the training atoms), the
recalibration scale, and, for backbones without vector features, the geometric front end that
builds them (:mod:`.geometric_features`).
"""

from typing import Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from . import keys
from ._e3nn import o3
from .config import HeadConfig
from .feature_density import FeatureDensity
from .geometric_features import GeometricFeatures
from .invariants import InvariantFeatures
from .irreps_features import count_irreps
from .output_range import OutputRange
from .recalibration import VarianceScale


def reads_geometry(config: HeadConfig, irreps_in) -> bool:
    """Whether a head of ``config`` on node features ``irreps_in`` builds geometric 1o/2e
    features: always with ``geometric_features="always"``, and with ``"auto"`` when the backbone
    has no 1o features.

    Raises:
        ValueError: for ``geometric_features="never"`` on features without 1o channels.
    """
    has_vectors = count_irreps(irreps_in, 1, -1) > 0
    if config.geometric_features == "never" and not has_vectors:
        raise ValueError(
            f"the backbone's node features '{o3.Irreps(irreps_in)}' have no vector (1o) channels "
            "and geometric_features='never': use geometric_features='auto' (the head builds "
            "vector features from the geometry) or a backbone with l_max >= 1"
        )
    return config.geometric_features == "always" or not has_vectors


def species_or_zeros(species: Optional[Tensor], like: Tensor) -> Tensor:
    """``species`` (N,) int64, or species 0 for each of the N rows of ``like`` when ``None``."""
    if species is None:
        return torch.zeros(like.shape[0], dtype=torch.long, device=like.device)
    return species


class HeadBase(nn.Module):
    """Base of the three heads. A head class implements ``build(config)`` (its own modules, on
    features of irreps ``self.head_irreps``) and ``forward_with_distance``; the constructor,
    ``forward`` and the shared parts are here.

    Args:
        irreps_in: irreps of the backbone node features the head reads.
        config: the head's hyperparameters. With ``force_objective="detached"`` the head, while
            training (``self.training``), reads detached node features and forces, so that its
            loss sends no gradient into the backbone. In evaluation the inputs keep their graph:
            sigma stays differentiable with respect to positions (UDD bias forces).
        num_species: number of species (elements / model types) of the per-element statistics.
        r_max: the backbone's cutoff (A); needed when the head builds geometric features
            (:func:`reads_geometry`).
        avg_num_neighbors: the backbone's average number of neighbours (normalises the
            geometric features' neighbour sum).

    Submodules: ``invariants`` (:class:`InvariantFeatures`, D descriptors per atom of the
    backbone's features), ``density`` (:class:`FeatureDensity`), ``output_range``
    (:class:`OutputRange` of the head class's ``bounded_outputs``), ``variance_scale``
    (:class:`VarianceScale`), ``geometry`` (:class:`GeometricFeatures` or ``None``).
    Attributes: ``irreps_in`` (the backbone's features), ``head_irreps`` (what the
    parameterisation reads: ``irreps_in``, plus the geometric channels when ``geometry`` is set).
    """

    detach_backbone: bool
    #: the learned invariant outputs ``output_range`` bounds (in the order the head passes them),
    #: and those of them bounded from above only
    bounded_outputs: Tuple[str, ...] = ()
    bounded_upper_only: Tuple[str, ...] = ()

    def __init__(
        self,
        irreps_in,
        config: HeadConfig,
        num_species: int = 1,
        r_max: Optional[float] = None,
        avg_num_neighbors: float = 1.0,
    ):
        super().__init__()
        self.detach_backbone = config.force_objective == "detached"
        self.irreps_in = str(o3.Irreps(irreps_in))
        self.init_density(irreps_in, num_species)
        if reads_geometry(config, irreps_in):
            if r_max is None:
                raise ValueError(
                    "the head builds vector features from the geometry (the backbone's features "
                    f"'{self.irreps_in}' have no 1o channels, or geometric_features='always'): "
                    "it needs the backbone's cutoff r_max"
                )
            self.geometry = GeometricFeatures(
                irreps_in, float(r_max), config.geometric_channels, float(avg_num_neighbors)
            )
            self.head_irreps = self.geometry.irreps_out
        else:
            self.geometry = None
            self.head_irreps = self.irreps_in
        self.build(config)

    def build(self, config: HeadConfig) -> None:
        """Create the head's own modules (reading ``self.head_irreps`` features)."""
        raise NotImplementedError

    def forward(
        self,
        node_feats: Tensor,
        forces: Tensor,
        species: Optional[Tensor] = None,
        edge_index: Optional[Tensor] = None,
        edge_vectors: Optional[Tensor] = None,
    ):
        """The head's parameters (a NamedTuple of per-atom tensors): see
        ``forward_with_distance``."""
        return self.forward_with_distance(node_feats, forces, species, edge_index, edge_vectors)[0]

    def __setstate__(self, state) -> None:
        # heads pickled before the force objective existed trained the backbone through the NLL;
        # heads pickled before the geometric front end read the backbone's features only
        state.setdefault("detach_backbone", False)
        if "geometry" not in state.get("_modules", {}):
            state.setdefault("geometry", None)
        super().__setstate__(state)
        if "head_irreps" not in self.__dict__ and "irreps_in" in self.__dict__:
            self.head_irreps = self.irreps_in
        if "output_range" not in self._modules and "density" in self._modules:
            # pickled before the output range existed: nothing is clamped until it is fitted
            self.output_range = self.new_output_range(self.density.num_species)

    def distance_and_features(
        self,
        node_feats: Tensor,
        species: Optional[Tensor],
        edge_index: Optional[Tensor],
        edge_vectors: Optional[Tensor],
    ) -> Tuple[Tensor, Tensor]:
        """(:meth:`feature_distance_sq` (N,), :meth:`head_features` (N, head_irreps.dim)), with
        the invariant descriptors of ``node_feats`` computed once for both."""
        invariants = self.invariants(node_feats)
        distance_sq = self.descriptor_distance_sq(invariants, species)
        return distance_sq, self.head_features(node_feats, edge_index, edge_vectors, invariants)

    def head_features(
        self,
        node_feats: Tensor,
        edge_index: Optional[Tensor],
        edge_vectors: Optional[Tensor],
        invariants: Optional[Tensor] = None,
    ) -> Tensor:
        """What the parameterisation reads, (N, head_irreps.dim): ``node_feats``, with the
        geometric channels appended when the head has a ``geometry`` module (it then needs
        ``edge_index`` (2, E) [centre, neighbour] and ``edge_vectors`` (E, 3) A; ``invariants``
        (N, D): the descriptors of ``node_feats`` when already computed)."""
        if self.geometry is not None:
            if edge_index is None or edge_vectors is None:
                raise ValueError(
                    "this head builds vector features from the geometry: pass edge_index and "
                    "edge_vectors (the backbone's neighbour list)"
                )
            if self.training:
                edge_vectors = edge_vectors.detach()
            return self.geometry(node_feats, edge_index, edge_vectors, invariants)
        return node_feats

    def backbone_inputs(self, node_feats: Tensor, forces: Tensor) -> Tuple[Tensor, Tensor]:
        """``(node_feats, forces)``, detached while training with ``detach_backbone``."""
        if self.training and self.detach_backbone:
            return node_feats.detach(), forces.detach()
        return node_feats, forces

    def init_density(self, irreps_in, num_species: int) -> None:
        """(Re)create the density, output range and recalibration modules with empty statistics,
        no bounds and c = 1."""
        if int(num_species) < 1:
            raise ValueError(f"invalid num_species={num_species!r}: must be >= 1")
        self.invariants = InvariantFeatures(irreps_in)
        self.density = FeatureDensity(int(num_species), self.invariants.dim)
        self.output_range = self.new_output_range(int(num_species))
        self.variance_scale = VarianceScale()

    def new_output_range(self, num_species: int) -> OutputRange:
        """An unfitted :class:`OutputRange` of this head class's ``bounded_outputs``."""
        return OutputRange(num_species, self.bounded_outputs, self.bounded_upper_only)

    def feature_distance_sq(self, node_feats: Tensor, species: Optional[Tensor]) -> Tensor:
        """r_i^2 (N,), the normalised squared Mahalanobis distance of each atom's descriptors to
        the training atoms of its species (mean 1 over them; 0 while no statistics are fitted).
        ``species`` (N,) int64, ``None`` means all atoms are species 0."""
        return self.descriptor_distance_sq(self.invariants(node_feats), species)

    def descriptor_distance_sq(self, invariants: Tensor, species: Optional[Tensor]) -> Tensor:
        """:meth:`feature_distance_sq` from the descriptors ``invariants`` (N, D) of the features
        (``self.invariants(node_feats)``)."""
        return self.density(invariants, species_or_zeros(species, invariants))

    def prior_evidence(self, variance: Tensor, species: Optional[Tensor]) -> Tensor:
        """The force prior's evidence (:meth:`FeatureDensity.prior_evidence`) for ``variance``
        (N,) or (N, 3), (eV/A)^2; ``species`` ``None`` means all atoms are species 0."""
        return self.density.prior_evidence(variance, species_or_zeros(species, variance))

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
