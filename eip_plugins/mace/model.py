"""MACE plus an evidential head: the model ``mace_run_train --head=...`` trains and saves.

:class:`EvidentialMACE` wraps a ``MACE``/``ScaleShiftMACE`` backbone. Its forward has MACE's
signature and returns MACE's output dict unchanged (energy, conservative forces, stress, ...,
``node_feats``) plus the head's fields (:mod:`eip_plugins.core.keys`):

=========================  ===========  ===================================================
``forces_uncertainty``     (N,)         sigma_i = sqrt(tr Var[F_i] / 3), eV/A
``forces_epistemic_cov``   (N, 3, 3)    (eV/A)^2
``forces_aleatoric_cov``   (N, 3, 3)    (eV/A)^2
``uncertainty``            (G,)         mean_i sigma_i per structure, eV/A
``uncertainty_max``        (G,)         max_i sigma_i per structure, eV/A
raw parameters             per head     e.g. ``e2ip_kappa`` (N,), ``e2ip_psi`` (N, 3, 3)
``forces_feature_distance``  (N,)       r_i, feature distance to the training atoms (RMS 1)
``feature_distance[_max]``   (G,)       its mean / max per structure
=========================  ===========  ===================================================

Node features read by the head. MACE returns ``node_feats = cat([h_1, ..., h_T], dim=-1)``, the
outputs of its T product blocks. Layers 1..T-1 carry ``--hidden_irreps`` (e.g. ``Cx0e + Cx1o``);
the last layer carries its scalars only (``Cx0e``). The irreps of the concatenation are therefore
``hidden_irreps * (T - 1) + Cx0e`` (not simplified: e3nn order of the concatenation), computed
from ``products[i].linear.irreps_out`` by :func:`node_feats_irreps`. The head uses every 0e, 1o
(and 2e) channel of it; the 1o channels come from layers 1..T-1. A scalar-only model
(``--max_L=0``, ``--hidden_irreps='Cx0e'``, or T = 1) has none: the head then builds vector and
l = 2 features from MACE's neighbour list and invariant features
(:mod:`eip_plugins.core.geometric_features`, with MACE's ``r_max`` and ``avg_num_neighbors``).

The wrapper is TorchScript-compatible (``e3nn.util.jit.compile``, as MACE does for
``*_compiled.model``). In eager mode, attributes it does not define (``interactions``,
``readouts``, ``scale_shift``, ...) are looked up on the backbone, so MACE's tooling (optimizer
parameter groups, descriptors in ``mace_eval_configs``) keeps working.
"""

from __future__ import annotations

import json
from typing import Dict, Optional, Tuple

import torch
from e3nn.util.jit import compile_mode
from torch import Tensor, nn

from ..core._e3nn import o3
from ..core.build import build_head
from ..core.config import HeadConfig


def node_feats_irreps(backbone: nn.Module) -> o3.Irreps:
    """Irreps of MACE's returned ``node_feats``: the product blocks' outputs, concatenated."""
    irreps = o3.Irreps("")
    for product in backbone.products:
        irreps = irreps + o3.Irreps(str(product.linear.irreps_out))
    return irreps


def avg_num_neighbors(backbone: nn.Module) -> float:
    """MACE's ``avg_num_neighbors`` (the normalisation of its messages); 1 if not found."""
    for interaction in getattr(backbone, "interactions", []):
        value = getattr(interaction, "avg_num_neighbors", None)
        if value is not None:
            return float(value)
    return 1.0


def head_edges(positions: Tensor, edge_index: Tensor, shifts: Tensor) -> Tuple[Tensor, Tensor]:
    """MACE's neighbour list in the head's convention: (2, E) [centre, neighbour] and the vectors
    r_neighbour - r_centre (E, 3), A. MACE's messages go from ``sender = edge_index[0]`` to
    ``receiver = edge_index[1]`` with vectors r_receiver - r_sender + shifts; the receiver is the
    centre."""
    sender, receiver = edge_index[0], edge_index[1]
    vectors = positions[sender] - positions[receiver] - shifts
    return torch.stack([receiver, sender]), vectors


@compile_mode("script")
class EvidentialMACE(nn.Module):
    """A MACE backbone with an evidential force-uncertainty head on its node features.

    Args:
        backbone: a ``MACE`` or ``ScaleShiftMACE`` model.
        config: the head's hyperparameters.

    Forward: MACE's signature and output dict, plus the uncertainty fields (module docstring).
    In a MACE optimisation step (the module in training mode and ``training=True``) the fields
    are left out: the loss (:class:`eip_plugins.mace.loss.EvidentialLoss`) evaluates the head
    on the step's node features and forces itself. Call ``.eval()`` (as ``MACEUQCalculator``
    does) to get them with the graph kept (``training=True``, for UDD bias forces).
    """

    def __init__(self, backbone: nn.Module, config: HeadConfig):
        super().__init__()
        irreps = node_feats_irreps(backbone)
        # MACE's tooling (calculators, LAMMPS export, eval_configs) reads these at the top level.
        # Registered before ``self.model`` exists, as attribute look-ups fall back to the backbone.
        self.register_buffer("atomic_numbers", backbone.atomic_numbers.clone())
        self.register_buffer("r_max", backbone.r_max.clone())
        self.register_buffer("num_interactions", backbone.num_interactions.clone())
        self.heads = list(backbone.heads)
        self.node_feats_irreps = str(irreps)
        self.eip_head_kind = config.kind
        self.eip_head_config = json.dumps(config.to_dict())
        # the MACE head whose forces the head was fit to ("": all heads, as mace_run_train does)
        self.eip_mace_head = ""
        self.model = backbone
        self.head = build_head(
            config,
            irreps,
            num_species=len(backbone.atomic_numbers),
            r_max=float(backbone.r_max),
            avg_num_neighbors=avg_num_neighbors(backbone),
        )
        self.head_reads_edges = self.head.geometry is not None

    def forward(
        self,
        data: Dict[str, Tensor],
        training: bool = False,
        compute_force: bool = True,
        compute_virials: bool = False,
        compute_stress: bool = False,
        compute_displacement: bool = False,
        compute_hessian: bool = False,
        compute_edge_forces: bool = False,
        compute_atomic_stresses: bool = False,
        lammps_mliap: bool = False,
    ) -> Dict[str, Optional[Tensor]]:
        out = self.model(
            data,
            training=training,
            compute_force=compute_force,
            compute_virials=compute_virials,
            compute_stress=compute_stress,
            compute_displacement=compute_displacement,
            compute_hessian=compute_hessian,
            compute_edge_forces=compute_edge_forces,
            compute_atomic_stresses=compute_atomic_stresses,
            lammps_mliap=lammps_mliap,
        )
        node_feats = out["node_feats"]
        forces = out["forces"]
        # MACE's optimisation steps (module in training mode, training=True): the loss computes
        # the head itself (EvidentialLoss), so it is not computed here a second time
        loss_step = training and self.training
        if node_feats is not None and forces is not None and not loss_step:
            num_graphs = data["ptr"].numel() - 1
            species = torch.argmax(data["node_attrs"], dim=-1)
            edge_index: Optional[Tensor] = None
            edge_vectors: Optional[Tensor] = None
            if self.head_reads_edges:  # the head builds vector features from the geometry
                if lammps_mliap:  # LAMMPS passes the edge vectors (receiver - sender) itself
                    edge_index, edge_vectors = data["edge_index"].flip(0), -data["vectors"]
                else:
                    edge_index, edge_vectors = head_edges(
                        data["positions"], data["edge_index"], data["shifts"]
                    )
            if not training:  # MACE kept no force graph: nothing differentiates the fields
                node_feats = node_feats.detach()
                if edge_vectors is not None:
                    edge_vectors = edge_vectors.detach()
            params, distance_sq = self.head.forward_with_distance(
                node_feats, forces, species, edge_index, edge_vectors
            )
            fields = self.head.fields(params, data["batch"], num_graphs, distance_sq)
            for key, value in fields.items():
                out[key] = value
        return out

    def __setstate__(self, state) -> None:
        # a model pickled by an older eip-plugins: its head has no feature statistics and no
        # recalibration scale yet; give it the empty (no-op) ones, one set per element
        super().__setstate__(state)
        head = self._modules.get("head")
        if head is not None and "density" not in head._modules:
            head.init_density(head.irreps_in, len(self._buffers["atomic_numbers"]))
        if head is not None and "head_reads_edges" not in self.__dict__:
            self.head_reads_edges = getattr(head, "geometry", None) is not None

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            backbone = self.__dict__.get("_modules", {}).get("model")
            if name.startswith("_") or backbone is None:
                raise
            return getattr(backbone, name)


def head_config_of(model: nn.Module) -> HeadConfig:
    """The :class:`HeadConfig` stored in an :class:`EvidentialMACE` (eager or TorchScript)."""
    return HeadConfig.from_dict(json.loads(model.eip_head_config))


def mean_squared_force(train_loader, max_batches: int = 200) -> float:
    """Mean squared reference force component <F_c^2> over (at most ``max_batches`` of) the
    training set, (eV/A)^2, counting atoms whose structure has a non-zero forces weight.

    The loader's own random generators (MACE seeds one for shuffling) are left as they were, so
    that the training epochs see the batches a plain run of the same seed sees."""
    generators = {
        id(g): g
        for g in (getattr(train_loader, "generator", None),
                  getattr(getattr(train_loader, "sampler", None), "generator", None))
        if isinstance(g, torch.Generator)
    }  # fmt: skip
    states = {key: g.get_state() for key, g in generators.items()}
    total, count = 0.0, 0
    try:
        for i, batch in enumerate(train_loader):
            if i >= max_batches:
                break
            weight = (batch.weight * batch.forces_weight)[batch.batch]
            mask = weight > 0
            forces = batch.forces[mask]
            total += float(forces.double().pow(2).sum())
            count += forces.numel()
    finally:
        for key, g in generators.items():
            g.set_state(states[key])
    if count == 0:
        raise ValueError("the training set has no atoms with reference forces")
    return total / count


def wrap_model(
    backbone: nn.Module, config: HeadConfig, psi0: float | None = None
) -> EvidentialMACE:
    """Wrap ``backbone``; for e2ip/mve set the head's psi0 ((eV/A)^2) when given."""
    model = EvidentialMACE(backbone, config)
    covariance = getattr(model.head, "covariance", None)
    if covariance is not None and psi0 is not None:
        covariance.set_psi0(psi0)
    return model.to(dtype=_dtype_of(backbone))


def _dtype_of(module: nn.Module) -> torch.dtype:
    for p in module.parameters():
        return p.dtype
    return torch.get_default_dtype()
