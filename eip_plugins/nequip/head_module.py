"""Graph modules that attach an evidential head to a NequIP force model.

- :class:`NodeFeatureTap` copies the node features of an interaction layer to a private field
  (keeping the autograd graph, unlike ``nequip.nn.SaveForOutput``), after the features an
  earlier layer's tap wrote (a chain of taps: the head reads every layer's features).
- :class:`EdgeFeatureTap` does the same for models whose features live on the edges (Allegro):
  the per-atom sum of the scalar edge latents around each atom.
- :class:`EvidentialHeadOutput` wraps the force model (``ForceStressOutput``), runs the core head
  on the tapped features and the conservative forces, and writes the uncertainty fields and the
  head parameters into the output dict (the loss reads the parameters from there).
"""

from typing import Dict, List, Optional

import torch
from nequip.data import AtomicDataDict
from nequip.nn._graph_mixin import GraphModuleMixin
from torch import Tensor

from eip_plugins.core import HeadConfig, build_head, keys
from eip_plugins.core.inference import script_head

from . import _fields


class NodeFeatureTap(GraphModuleMixin, torch.nn.Module):
    """Copy ``node_features`` (N, irreps.dim) to ``out_field`` without detaching it; with
    ``prefix_field``, write [data[prefix_field], node_features] (N, C + irreps.dim) there instead
    (irreps concatenated in that order): a chain of taps, one after each interaction layer, each
    writing its own field, gives the last one every layer's features (``feature_layer: all``).

    Args:
        out_field: the field written.
        prefix_field: the field of an earlier tap whose (N, C) features go first; ``""``: none.
    """

    out_field: str
    prefix_field: str = ""  # modules pickled before the option tapped one layer

    def __init__(self, out_field: str = _fields.HEAD_FEATURES, irreps_in=None, prefix_field=""):
        super().__init__()
        self.out_field = out_field
        self.prefix_field = str(prefix_field or "")
        required = [AtomicDataDict.NODE_FEATURES_KEY]
        if self.prefix_field:
            required.append(self.prefix_field)
        self._init_irreps(irreps_in=irreps_in, required_irreps_in=required)
        irreps = self.irreps_in[AtomicDataDict.NODE_FEATURES_KEY]
        if self.prefix_field:
            irreps = self.irreps_in[self.prefix_field] + irreps
        self.irreps_out[out_field] = irreps

    def forward(self, data: AtomicDataDict.Type) -> AtomicDataDict.Type:
        if self.prefix_field != "":
            data[self.out_field] = torch.cat(
                [data[self.prefix_field], data[AtomicDataDict.NODE_FEATURES_KEY]], dim=-1
            )
        else:
            data[self.out_field] = data[AtomicDataDict.NODE_FEATURES_KEY]
        return data


class EdgeFeatureTap(GraphModuleMixin, torch.nn.Module):
    """Per-atom invariants of a model with per-edge scalar latents (Allegro): h_i = 1/n_avg
    sum_j x_ij over the edges centred on atom i (``edge_index[0]``, NequIP's convention, as
    Allegro's own ``EdgewiseReduce``), written to ``out_field`` (N, C) with the graph kept.

    Args:
        in_field: the per-edge scalar features (E, C), irreps ``Cx0e``.
        avg_num_neighbors: n_avg, the normalisation of the sum.
    """

    in_field: str
    out_field: str

    def __init__(
        self,
        in_field: str = AtomicDataDict.EDGE_FEATURES_KEY,
        out_field: str = _fields.HEAD_FEATURES,
        avg_num_neighbors: float = 1.0,
        irreps_in=None,
    ):
        super().__init__()
        self.in_field, self.out_field = in_field, out_field
        self.norm = 1.0 / float(avg_num_neighbors)
        self._init_irreps(irreps_in=irreps_in, required_irreps_in=[in_field])
        irreps = self.irreps_in[in_field]
        if any(ir.l != 0 or ir.p != 1 for _, ir in irreps):
            raise ValueError(f"the edge features `{in_field}` are {irreps}: expected scalars")
        self.irreps_out[out_field] = irreps

    def forward(self, data: AtomicDataDict.Type) -> AtomicDataDict.Type:
        edge_feats = data[self.in_field]
        centre = data[AtomicDataDict.EDGE_INDEX_KEY][0]
        zeros = edge_feats.new_zeros((AtomicDataDict.num_nodes(data), edge_feats.shape[1]))
        data[self.out_field] = zeros.index_add(0, centre, edge_feats) * self.norm
        return data


def evidential_head_outputs(model: torch.nn.Module) -> List[torch.nn.Module]:
    """The :class:`EvidentialHeadOutput` modules of ``model``; duck-typed (a ``head_kind`` of
    :data:`~eip_plugins.core.HEAD_KINDS` and a ``head``), since the classes of a
    ``nequip-package``'d model live in the package's namespace."""
    from eip_plugins.core import HEAD_KINDS

    return [
        m
        for m in model.modules()
        if getattr(m, "head_kind", None) in HEAD_KINDS
        and isinstance(getattr(m, "head", None), torch.nn.Module)
    ]


def has_evidential_head(model: torch.nn.Module) -> bool:
    """Whether ``model`` contains an :class:`EvidentialHeadOutput`."""
    return bool(evidential_head_outputs(model))


def heads_for_inference(model: torch.nn.Module) -> torch.nn.Module:
    """Prepare every evidential head of an eager ``model`` for inference, in place (returns
    ``model``): the head's parameters stop requiring gradients (nothing trains them here, and the
    head then records no autograd graph of its own; sigma stays differentiable with respect to
    positions for UDD), and the head runs as TorchScript (same results to rounding, about half
    the head's per-call cost on small structures: :mod:`eip_plugins.core.inference`). The force
    model is left as it is."""
    for output in evidential_head_outputs(model):
        for parameter in output.head.parameters():
            parameter.requires_grad_(False)
        output.head = script_head(output.head)
    return model


class EvidentialHeadOutput(GraphModuleMixin, torch.nn.Module):
    """Force model + evidential head.

    Args:
        func: the force model (usually ``ForceStressOutput``) whose output contains ``forces``
            (N, 3) eV/A and the tapped features ``feature_field``.
        head: head hyperparameters (``HeadConfig`` fields as a dict, ``kind`` included).
        feature_field: the field written by :class:`NodeFeatureTap`.
        num_types: number of model types; the head's per-element feature statistics are indexed
            by the atom type (``atom_types``).
        r_max: the model's cutoff (A) and ``avg_num_neighbors`` its average neighbour count:
            used when the head builds geometric 1o/2e features from the neighbour list
            (``edge_index``, ``edge_vectors``), i.e. for features without 1o channels.

    Output (added to ``func``'s): the five uncertainty fields of :mod:`eip_plugins.core.keys`,
    the feature distance fields (``forces_feature_distance``, ``feature_distance``,
    ``feature_distance_max``) and the head parameters
    (:data:`eip_plugins.nequip._fields.PARAM_FIELDS`). Forces, energy and stress are ``func``'s,
    unchanged.
    """

    feature_field: str
    head_kind: str
    partial_feature_fields: List[str]

    def __init__(
        self,
        func: GraphModuleMixin,
        head: Dict,
        feature_field: str = _fields.HEAD_FEATURES,
        num_types: int = 1,
        r_max: Optional[float] = None,
        avg_num_neighbors: float = 1.0,
    ):
        super().__init__()
        config = head if isinstance(head, HeadConfig) else HeadConfig(**dict(head))
        if feature_field not in func.irreps_out:
            raise ValueError(
                f"the force model does not output the head features `{feature_field}`; "
                "insert a NodeFeatureTap into the energy model first"
            )
        self.func = func
        self.feature_field = feature_field
        self.head_kind = config.kind
        self.head_config = config.to_dict()
        self.head = build_head(
            config,
            func.irreps_out[feature_field],
            num_species=num_types,
            r_max=r_max,
            avg_num_neighbors=avg_num_neighbors,
        )
        # The core builds its constant buffers (bases, selections, path weights) in float64 and
        # casts them at every call, so that a float32 MACE model evaluated in float64 stays exact.
        # A NequIP model computes in its model_dtype for good: cast them once, here (identical
        # numbers; 11 fewer copies per call on the benchmark's float32 l_max = 0 e2ip head).
        self.head.to(dtype=next(self.head.parameters()).dtype)
        # the fields of the taps before the last one (`feature_layer: all`): not outputs
        self.partial_feature_fields = [
            f for f in func.irreps_out if _fields.is_partial_feature_field(f, feature_field)
        ]
        irreps_out = dict(func.irreps_out)
        for field in [feature_field, *self.partial_feature_fields]:
            irreps_out.pop(field)
        irreps_out.update(_fields.output_irreps(config.kind))
        self._init_irreps(irreps_in=func.irreps_in)
        self.irreps_out = AtomicDataDict._fix_irreps_dict(irreps_out)

    def __setstate__(self, state) -> None:
        state.setdefault("partial_feature_fields", [])  # pickled before `feature_layer: all`
        super().__setstate__(state)

    def forward(self, data: AtomicDataDict.Type) -> AtomicDataDict.Type:
        data = self.func(data)
        feats = data.pop(self.feature_field)
        for field in self.partial_feature_fields:
            data.pop(field)
        forces = data[AtomicDataDict.FORCE_KEY]
        species = data[AtomicDataDict.ATOM_TYPE_KEY].reshape(-1)
        edge_vectors = data[AtomicDataDict.EDGE_VECTORS_KEY]
        if not (self.training or self.func.training):
            # inference: the force model kept no graph (UDD sets its training flag to keep one),
            # so nothing differentiates the fields and the head need not record its own graph
            feats, edge_vectors = feats.detach(), edge_vectors.detach()
        # forces are -dE/dpos in the dtype of the positions (float64 data for a float32 model)
        params, distance_sq = self.head.forward_with_distance(
            feats,
            forces.to(feats.dtype),
            species,
            data[AtomicDataDict.EDGE_INDEX_KEY],
            edge_vectors,
        )
        if AtomicDataDict.BATCH_KEY in data:
            batch = data[AtomicDataDict.BATCH_KEY]
            num_graphs = AtomicDataDict.num_frames(data)
            data.update(self.head.fields(params, batch, num_graphs, distance_sq))
        else:
            # single-frame inference (the ASE compile target drops `batch`): plain reductions.
            # The scatter of the batched path (index_add with an all-zero index into a size-1
            # buffer) trips an Inductor CPU codegen assertion in torch 2.13.
            data.update(single_frame_fields(self.head, params, distance_sq))
        data.update(closed_form_fields(self.head_kind, params))
        return data

    def set_psi0(self, psi0: float) -> None:
        """Set the scale psi0 ((eV/A)^2) of Psi (e2ip) or Sigma (mve)."""
        covariance: Optional[torch.nn.Module] = getattr(self.head, "covariance", None)
        if covariance is None:
            raise ValueError(f"the {self.head_kind} head has no psi0 scale")
        covariance.set_psi0(psi0)


def single_frame_fields(head: torch.nn.Module, params, distance_sq: Tensor) -> Dict[str, Tensor]:
    """``head.fields`` for one structure: sigma (N,), covariances (N, 3, 3), feature distance
    (N,), their means/maxima (1,)."""
    unc = head.uncertainty(params)
    distance = torch.sqrt(distance_sq)
    out = {
        keys.FORCES_UNCERTAINTY: unc.sigma,
        keys.FORCES_EPISTEMIC_COV: unc.epistemic_cov,
        keys.FORCES_ALEATORIC_COV: unc.aleatoric_cov,
        keys.UNCERTAINTY: unc.sigma.mean().reshape(1),
        keys.UNCERTAINTY_MAX: unc.sigma.amax().reshape(1),
        keys.FORCES_FEATURE_DISTANCE: distance,
        keys.FEATURE_DISTANCE: distance.mean().reshape(1),
        keys.FEATURE_DISTANCE_MAX: distance.amax().reshape(1),
    }
    out.update(head.output_fields(params))
    return out


def closed_form_fields(kind: str, params) -> Dict[str, Tensor]:
    """Closed-form inverse and log-determinant of the SPD matrix of a ``kind`` head's
    ``params``, for the loss (by kind: a TorchScript head returns its own NamedTuple types)."""
    if kind == "e2ip":
        return {
            _fields.E2IP_PSI_INV: params.psi_inv,
            _fields.E2IP_LOG_DET_PSI: params.log_det_psi,
        }
    if kind == "mve":
        return {_fields.MVE_COV_INV: params.cov_inv, _fields.MVE_LOG_DET_COV: params.log_det_cov}
    return {}
