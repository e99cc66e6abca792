"""Model builders that put an evidential head on a NequIP GNN.

Why a builder and not a model modifier: NequIP model modifiers are classmethods discovered on
modules that are already inside a model (``nequip.model.modify`` looks them up on the model tree),
so they can swap or tune existing modules but an extension package cannot add a new top-level
output head to a model built by someone else's builder through them. Builders compose (an inner
``@model_builder`` call returns the raw module), so :func:`EvidentialNequIPGNNModel` builds
``NequIPGNNModel`` with every one of its arguments, taps the node features of one interaction layer
and wraps the force module with :class:`~eip_plugins.nequip.head_module.EvidentialHeadOutput`.
The result is an ordinary ``GraphModel``: checkpoints, ``nequip-package``, ``nequip-compile``,
EMA, DDP and NequIP's own modifiers (they act on the wrapped modules) keep working.
"""

from typing import Any, Dict, Optional, Union

import torch
from hydra.utils import get_method
from nequip.model import NequIPGNNModel, PresetNequIPGNNModel, model_builder
from nequip.nn import ConvNetLayer, ForceStressOutput, GraphModel, SequentialGraphNetwork

from eip_plugins.core import HeadConfig
from eip_plugins.core.irreps_features import count_irreps

from . import _fields
from .head_module import EdgeFeatureTap, EvidentialHeadOutput, NodeFeatureTap

# modules whose output is per-edge scalar latents the head sums per atom (nequip-allegro)
EDGE_MODULES = ("Allegro_Module",)
#: ``feature_layer`` value of a head that reads every convnet layer's node features
ALL_LAYERS = "all"


def _register_for_packaging() -> None:
    """Make the head packageable by ``nequip-package`` (``torch.package``).

    NequIP interns the extension's entry point, ``eip_plugins.nequip``. The head's maths lives in
    ``eip_plugins.core``, which cannot be interned: ``torch.package`` runs interned modules under
    a mangled name that is not in ``sys.modules``, and ``dataclasses`` (``HeadConfig``, defined
    with postponed annotations) looks its module up there. ``eip_plugins.core`` is therefore
    registered as external: a packaged evidential model loads where ``eip-plugins`` is installed.
    Done when a model is built rather than on ``import nequip`` (the packaging utilities import
    ``nequip.__init__`` themselves).
    """
    from nequip.scripts._package_utils import register_libraries_as_external_for_packaging

    register_libraries_as_external_for_packaging(extern_modules=["eip_plugins.core"])


def head_config(
    head: Union[str, Dict[str, Any]] = "e2ip",
    head_options: Optional[Dict[str, Any]] = None,
    forces_rms: Optional[float] = None,
) -> HeadConfig:
    """Validated :class:`HeadConfig` from the builder arguments.

    Args:
        head: head kind (``"e2ip"``, ``"eip"`` or ``"mve"``) or a dict of ``HeadConfig`` fields.
        head_options: further ``HeadConfig`` fields (``hidden``, ``quantile``, ``lam``,
            ``nu_w_floor``, ``psi0``, ``learn_psi0``, ``max_log_scale``); unknown keys are an error.
        forces_rms: RMS of the training forces, eV/A; when given (and ``psi0`` is not), the scale
            of the SPD matrix starts at psi0 = forces_rms^2 (eV/A)^2.
    """
    fields = dict(head) if isinstance(head, dict) else {"kind": head}
    fields.update(dict(head_options or {}))
    unknown = sorted(set(fields) - set(HeadConfig.__dataclass_fields__) - {"extra"})
    if unknown:
        raise ValueError(
            f"unknown head option(s) {unknown}; valid: {sorted(HeadConfig.__dataclass_fields__)}"
        )
    if forces_rms is not None and "psi0" not in fields:
        if not float(forces_rms) > 0.0:
            raise ValueError(f"invalid forces_rms={forces_rms!r}: must be > 0 eV/A")
        fields["psi0"] = float(forces_rms) ** 2
    return HeadConfig(**fields)


def attach_evidential_head(
    force_model: ForceStressOutput,
    config: HeadConfig,
    feature_layer: Union[int, str, None] = None,
    num_types: int = 1,
    r_max: Optional[float] = None,
) -> EvidentialHeadOutput:
    """Tap the node features of a convnet layer and wrap ``force_model`` with the head.

    Args:
        force_model: a NequIP ``ForceStressOutput`` around a ``SequentialGraphNetwork``.
        config: the head configuration.
        feature_layer: which ``ConvNetLayer`` to read: a Python index over the convnet layers,
            or ``"all"``: the node features of every layer, concatenated in layer order (as the
            head reads MACE's; its feature distance then sees every layer's invariants). An
            Allegro model has no convnet layer: its per-edge latents are summed around each atom
            (:class:`EdgeFeatureTap`). ``None`` (the builders' default, kept for the models
            saved before ``"all"`` existed): ``-2`` when that layer has vector (1o) features
            (NequIP's last layer outputs scalars only, the one before it is the last with 1o
            features), else the last layer. Without 1o features the head combines the scalars
            with geometric 1o/2e features it builds from the neighbour list (``l_max: 0``
            models, see :mod:`eip_plugins.core.geometric_features`).
        num_types: number of model types (``len(type_names)``), for the head's per-type
            feature statistics.
        r_max: the model's cutoff (A), for the geometric features.
    """
    if not isinstance(force_model, ForceStressOutput) or not force_model.do_derivatives:
        raise ValueError("the evidential head needs a model that predicts forces by autograd")
    energy_model = force_model.func
    if not isinstance(energy_model, SequentialGraphNetwork):
        raise ValueError(f"unsupported energy model {type(energy_model).__name__}")
    avg_num_neighbors = _avg_num_neighbors(energy_model)
    layers = convnet_layer_names(energy_model)
    edge_layers = [
        name for name, m in energy_model.named_children() if type(m).__name__ in EDGE_MODULES
    ]
    if not layers and edge_layers:  # Allegro: per-edge latents, summed around each atom
        if feature_layer not in (None, -1, ALL_LAYERS):
            raise ValueError(
                f"feature_layer={feature_layer}: an Allegro model has one feature module "
                f"('{edge_layers[-1]}'), leave feature_layer unset"
            )
        layer = edge_layers[-1]
        source = f"'{layer}'"
        tap = EdgeFeatureTap(
            avg_num_neighbors=avg_num_neighbors, irreps_in=getattr(energy_model, layer).irreps_out
        )
    else:
        if not layers:
            raise ValueError(
                "the model has neither NequIP's ConvNetLayer nor Allegro's module: the head "
                "cannot find its features"
            )
        tapped = _tapped_layers(energy_model, layers, feature_layer)
        prefix = ""  # each earlier layer's tap writes the features so far to a field of its own
        for name in tapped[:-1]:
            field = _fields.partial_feature_field(name)
            irreps_in = getattr(energy_model, name).irreps_out
            energy_model.insert(field, NodeFeatureTap(field, irreps_in, prefix), after=name)
            prefix = field
        layer, source = tapped[-1], ", ".join(f"'{name}'" for name in tapped)
        irreps_in = getattr(energy_model, layer).irreps_out
        tap = NodeFeatureTap(_fields.HEAD_FEATURES, irreps_in, prefix)
    irreps = tap.irreps_out[_fields.HEAD_FEATURES]
    if config.geometric_features == "never" and count_irreps(irreps, 1, -1) == 0:
        raise ValueError(
            f"the evidential head with geometric_features='never' needs vector (1o) node "
            f"features, but those of {source} are '{irreps}' (NequIP's last layer and Allegro's "
            "per-atom sums are scalars only): use geometric_features: auto, or a NequIP model "
            "with num_layers >= 2 and l_max >= 1"
        )
    energy_model.insert(_fields.HEAD_FEATURES, tap, after=layer)
    new_force_model = ForceStressOutput(energy_model, do_derivatives=True)
    return EvidentialHeadOutput(
        new_force_model,
        config,
        num_types=num_types,
        r_max=r_max,
        avg_num_neighbors=avg_num_neighbors,
    )


def convnet_layer_names(energy_model: torch.nn.Module) -> list:
    """The names of the ``ConvNetLayer`` children of ``energy_model`` (NequIP's interaction
    layers; an Allegro model has none), in layer order. Compared by class name, like
    :data:`EDGE_MODULES`: a model loaded from a NequIP package has the package's own copy of
    the class."""
    return [
        name
        for name, m in energy_model.named_children()
        if type(m).__name__ == ConvNetLayer.__name__
    ]


def _tapped_layers(
    energy_model: SequentialGraphNetwork, layers, feature_layer: Union[int, str, None]
) -> list:
    """The names of the convnet layers (of ``layers``) whose features the head reads, in layer
    order (see :func:`attach_evidential_head`)."""
    if feature_layer == ALL_LAYERS:
        return list(layers)
    if isinstance(feature_layer, (str, bool)):
        raise ValueError(
            f"invalid feature_layer={feature_layer!r}: a convnet layer index, '{ALL_LAYERS}' "
            "(every layer) or unset (the default layer)"
        )
    if feature_layer is None:
        feature_layer = _default_feature_layer(energy_model, layers)
    try:
        return [layers[int(feature_layer)]]
    except IndexError:
        raise ValueError(
            f"feature_layer={feature_layer} is out of range for {len(layers)} convnet "
            f"layers (valid: -{len(layers)}..{len(layers) - 1} or '{ALL_LAYERS}'; leave it "
            "unset for the default)"
        ) from None


def _default_feature_layer(energy_model: SequentialGraphNetwork, layers) -> int:
    """-2 when the layer before the last has 1o features, else -1 (the last layer)."""
    if len(layers) >= 2:
        irreps = getattr(energy_model, layers[-2]).irreps_out["node_features"]
        if count_irreps(irreps, 1, -1) > 0:
            return -2
    return -1


def _avg_num_neighbors(energy_model: torch.nn.Module) -> float:
    """The average number of neighbours NequIP normalises its convolutions with (mean over
    types of a per-type value); 1 when the model has no ``AvgNumNeighborsNorm``."""
    for module in energy_model.modules():
        norm_const = getattr(module, "norm_const", None)
        if type(module).__name__ == "AvgNumNeighborsNorm" and norm_const is not None:
            return float((1.0 / norm_const.double() ** 2).mean())
    return 1.0


@model_builder
def EvidentialNequIPGNNModel(
    head: Union[str, Dict[str, Any]] = "e2ip",
    head_options: Optional[Dict[str, Any]] = None,
    forces_rms: Optional[float] = None,
    feature_layer: Union[int, str, None] = None,
    **kwargs,
) -> GraphModel:
    """``nequip.model.NequIPGNNModel`` with an evidential force-uncertainty head.

    Args:
        head: ``"e2ip"`` (default), ``"eip"`` or ``"mve"`` (see :class:`HeadConfig`).
        head_options: other ``HeadConfig`` fields, e.g. ``{hidden: 32, quantile: 0.4}``.
        forces_rms: RMS of the training forces (eV/A), e.g. ``${training_data_stats:forces_rms}``;
            sets the initial psi0 = forces_rms^2 of the e2ip / mve SPD matrix.
        feature_layer: convnet layer whose node features feed the head, or ``"all"`` (every
            layer's, concatenated; what ``config_with_eip`` sets). Unset: ``-2``, or the last
            layer for ``l_max: 0`` (see :func:`attach_evidential_head`).
        **kwargs: every argument of ``NequIPGNNModel`` (``seed``, ``model_dtype``,
            ``type_names``, ``r_max``, ``num_layers``, ``l_max`` (0 too), ...).

    Returns:
        A ``GraphModel`` whose output adds the fields of :mod:`eip_plugins.nequip._fields`.
    """
    config = head_config(head, head_options, forces_rms)
    _register_for_packaging()
    return attach_evidential_head(
        NequIPGNNModel(**kwargs), config, feature_layer, _num_types(kwargs), kwargs.get("r_max")
    )


@model_builder
def EvidentialPresetNequIPGNNModel(
    head: Union[str, Dict[str, Any]] = "e2ip",
    head_options: Optional[Dict[str, Any]] = None,
    forces_rms: Optional[float] = None,
    feature_layer: Union[int, str, None] = None,
    **kwargs,
) -> GraphModel:
    """``nequip.model.PresetNequIPGNNModel`` (``preset: S/M/L/XL``) with an evidential head."""
    config = head_config(head, head_options, forces_rms)
    _register_for_packaging()
    return attach_evidential_head(
        PresetNequIPGNNModel(**kwargs),
        config,
        feature_layer,
        _num_types(kwargs),
        kwargs.get("r_max"),
    )


@model_builder
def EvidentialAllegroModel(
    head: Union[str, Dict[str, Any]] = "e2ip",
    head_options: Optional[Dict[str, Any]] = None,
    forces_rms: Optional[float] = None,
    **kwargs,
) -> GraphModel:
    """``allegro.model.AllegroModel`` (the ``nequip-allegro`` package) with an evidential head.

    Allegro's features are per-edge scalar latents and tensor tracks, not per-atom 1o features:
    the head sums the scalar latents of the edges around each atom (:class:`EdgeFeatureTap`)
    and builds its vector and l = 2 features from the neighbour list
    (:mod:`eip_plugins.core.geometric_features`).

    Args:
        head, head_options, forces_rms: as for :func:`EvidentialNequIPGNNModel`.
        **kwargs: every argument of ``AllegroModel`` (``seed``, ``model_dtype``, ``type_names``,
            ``r_max``, ``l_max``, ``radial_chemical_embed``, ``num_layers``, ...).
    """
    try:
        from allegro.model import AllegroModel
    except ImportError:
        raise ImportError(
            'EvidentialAllegroModel needs nequip-allegro: pip install "eip-plugins[allegro]"'
        ) from None
    config = head_config(head, head_options, forces_rms)
    _register_for_packaging()
    return attach_evidential_head(
        AllegroModel(**kwargs), config, None, _num_types(kwargs), kwargs.get("r_max")
    )


def _num_types(builder_kwargs: Dict[str, Any]) -> int:
    type_names = builder_kwargs.get("type_names")
    if not type_names:
        raise ValueError("the model config needs `type_names` (one per atom type)")
    return len(type_names)


# arguments the outer builder keeps (GraphModel metadata) and forwards to the backbone's builder
_SHARED_BUILDER_ARGS = ("type_names", "r_max", "per_edge_type_cutoff")


@model_builder
def EvidentialHeadOnModel(
    backbone: Dict[str, Any],
    type_names,
    r_max: float,
    per_edge_type_cutoff: Optional[Dict] = None,
    head: Union[str, Dict[str, Any]] = "e2ip",
    head_options: Optional[Dict[str, Any]] = None,
    feature_layer: Union[int, str, None] = None,
) -> GraphModel:
    """An evidential head on the model that another builder makes.

    ``eip-attach nequip`` writes this into the checkpoint of a plain model it gave a head::

        model:
          _target_: eip_plugins.nequip.model.EvidentialHeadOnModel
          seed: 123
          model_dtype: float32
          type_names: [C, H, O]
          r_max: 4.0
          head: e2ip
          head_options: {hidden: 32, psi0: 0.27}
          feature_layer: all
          backbone:                      # the plain model's config, minus the shared arguments
            _target_: nequip.model.NequIPGNNModel
            l_max: 1
            num_layers: 3
            ...

    Args:
        backbone: the backbone's builder config with ``_target_``, without ``seed``,
            ``model_dtype``, ``type_names``, ``r_max`` and ``per_edge_type_cutoff`` (those are
            this builder's and are passed on).
        type_names, r_max (A), per_edge_type_cutoff: as for every NequIP builder.
        head, head_options: the head (see :func:`head_config`).
        feature_layer: convnet layer whose node features feed the head, or ``"all"`` (every
            layer's, concatenated; what ``eip-attach`` writes). Unset: see
            :func:`attach_evidential_head`.
    """
    config = head_config(head, head_options)
    backbone = dict(backbone)
    clash = sorted(set(backbone) & {"seed", "model_dtype", *_SHARED_BUILDER_ARGS})
    if clash:
        raise ValueError(f"give {clash} at the top level of the model config, not in `backbone`")
    builder = get_method(backbone.pop("_target_"))
    shared = {"type_names": type_names, "r_max": r_max}
    if per_edge_type_cutoff is not None:
        shared["per_edge_type_cutoff"] = per_edge_type_cutoff
    _register_for_packaging()
    # an inner @model_builder call returns the raw force module (no GraphModel wrapper)
    return attach_evidential_head(
        builder(**backbone, **shared), config, feature_layer, len(type_names), r_max
    )
