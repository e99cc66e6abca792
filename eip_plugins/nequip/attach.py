"""``eip-attach nequip``: give an already trained NequIP model an evidential head.

Input: a NequIP checkpoint (``best.ckpt`` of ``nequip-train``; its evaluation model, i.e. the EMA
weights when trained with ``EMALightningModule``) or a ``nequip-package`` file (``.nequip.zip``,
e.g. a foundation model saved locally; its eager model). That model is the frozen backbone. The node features of
one interaction layer (default: the one before NequIP's scalars-only last layer) and the
backbone's forces are computed once with NequIP's own data pipeline (``from_ase`` -> type mapper
-> neighbor list), cached, and only the head is trained on them with the SPEC force loss (the
energy term is dropped: the backbone's energy is fixed), early-stopped on the validation NLL.

Output: a NequIP checkpoint of the same training module whose model is
:func:`~eip_plugins.nequip.model.EvidentialHeadOnModel` around the original model config, with
the backbone's weights copied bit for bit and the trained head. It is verified before it is
renamed into place (reloaded through ``nequip.model.ModelFromCheckpoint``; energies and forces
must equal the input model's exactly), and every NequIP tool accepts it: ``nequip-package
build``, ``nequip-compile --target ase_uq``, ``NequIPUQCalculator.from_saved_model``.

For a package, the checkpoint's training config is the package's ``config.yaml`` (the config it
was trained with), except its ``data`` entry, which points at ``--train_file``/``--valid_file`` (``nequip-compile``
traces the model on a structure of it). Not accepted: compiled models (``.nequip.pt2``: no node
features can be read from them).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..attach import (
    AttachError,
    atomic_write,
    check_output_path,
    read_labelled,
    train_attached_head,
)
from ..attach.verify import require_identical_predictions
from ..calibration import CalibrationSettings
from ..core.config import HeadConfig
from ..model_files import check_model_archive, error_summary
from . import _fields
from .features import extract_features, frames_to_batches

log = logging.getLogger(__name__)

_HEAD_BUILDERS = {
    "eip_plugins.nequip.EvidentialNequIPGNNModel": "nequip.model.NequIPGNNModel",
    "eip_plugins.nequip.model.EvidentialNequIPGNNModel": "nequip.model.NequIPGNNModel",
    "eip_plugins.nequip.EvidentialPresetNequIPGNNModel": "nequip.model.PresetNequIPGNNModel",
    "eip_plugins.nequip.model.EvidentialPresetNequIPGNNModel": "nequip.model.PresetNequIPGNNModel",
    "eip_plugins.nequip.EvidentialAllegroModel": "allegro.model.AllegroModel",
    "eip_plugins.nequip.model.EvidentialAllegroModel": "allegro.model.AllegroModel",
}
_ATTACHED_BUILDERS = {
    "eip_plugins.nequip.EvidentialHeadOnModel",
    "eip_plugins.nequip.model.EvidentialHeadOnModel",
}
_HEAD_ARGS = ("head", "head_options", "forces_rms", "feature_layer")
_TOP_LEVEL_ARGS = ("seed", "model_dtype", "type_names", "r_max", "per_edge_type_cutoff")


# -- reading the input ----------------------------------------------------------------------------
def is_package(path) -> bool:
    return str(path).endswith(".nequip.zip")


def load_checkpoint(path) -> dict:
    """The checkpoint dict of a ``nequip-train`` run; AttachError for anything else."""
    path = Path(path)
    if not path.is_file():
        raise AttachError(f"model file {path} does not exist")
    if path.name.endswith(".pt2"):
        raise AttachError(
            f"{path} is a compiled (AOTInductor) model: its node features cannot be read. Give "
            "the checkpoint (best.ckpt) it was compiled from."
        )
    try:
        check_model_archive(path, "a NequIP checkpoint")
    except ValueError as err:
        raise AttachError(str(err)) from err
    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means "not a checkpoint"
        first = error_summary(err)
        raise AttachError(
            f"{path} is not a NequIP checkpoint (torch.load failed: {type(err).__name__}: {first})"
        ) from err
    try:
        hp = ck["hyper_parameters"]
        hp["model"]["_target_"]
        hp["info_dict"]["training_module"]["_target_"]
        ck["state_dict"]
    except (TypeError, KeyError) as err:
        raise AttachError(
            f"{path} is not a NequIP checkpoint (no hyper_parameters.model / info_dict / "
            f"state_dict: missing {err})"
        ) from None
    return ck


def checkpoint_from_package(path, train_file, valid_file, forces_key: str) -> dict:
    """A checkpoint dict (no ``state_dict`` yet) from a package's ``config.yaml``."""
    import lightning
    import yaml
    from nequip.model.saved_models.package import _suppress_package_importer_exporter_warnings
    from nequip.utils import get_current_code_versions

    path = Path(path)
    if not path.is_file():
        raise AttachError(f"model file {path} does not exist")
    try:
        with _suppress_package_importer_exporter_warnings():
            imp = torch.package.PackageImporter(str(path))
            info = yaml.safe_load(imp.load_text("model", "config.yaml"))
    except Exception as err:  # noqa: BLE001 - a broken zip or a zip that is not a package
        raise AttachError(
            f"{path} is not a nequip-package file ({type(err).__name__}: {err})"
        ) from err
    try:
        module_cfg = dict(info["training_module"])
        module_cfg.pop("_target_")
        model_cfg = module_cfg.pop("model")
        model_cfg["_target_"]
    except (TypeError, KeyError) as err:
        raise AttachError(f"{path}: its config.yaml has no training_module.model ({err})") from None
    if model_cfg["_target_"].startswith("nequip.model.ModelFrom"):
        raise AttachError(
            f"{path} was itself built from another saved model ({model_cfg['_target_']}); "
            "attach the head to that model instead"
        )
    info["versions"] = get_current_code_versions(verbose=False)
    info["data"] = _data_config(train_file, valid_file or train_file, forces_key, model_cfg)
    hp = {
        **module_cfg,
        "model": model_cfg,
        "num_datasets": {"train": 1, "val": 0, "test": 0, "predict": 0},
        "info_dict": info,
    }
    return {
        "epoch": 0,
        "global_step": 0,
        "pytorch-lightning_version": lightning.__version__,
        "hyper_parameters": hp,
    }


def _data_config(train_file, valid_file, forces_key: str, model_cfg: dict) -> dict:
    """An ``ASEDataModule`` on the head's training data (example data for ``nequip-compile``)."""
    types = list(model_cfg["type_names"])
    return {
        "_target_": "nequip.data.datamodule.ASEDataModule",
        "seed": 0,
        "train_file_path": str(Path(train_file).resolve()),
        "val_file_path": str(Path(valid_file).resolve()),
        "key_mapping": {forces_key: "forces"},
        "transforms": [
            {
                "_target_": "nequip.data.transforms.ChemicalSpeciesToAtomTypeMapper",
                "model_type_names": types,
                "chemical_species_to_atom_type_map": {t: t for t in types},
            },
            {
                "_target_": "nequip.data.transforms.NonPeriodicCellTransform",
                # molecules (pbc all False): a padded box replaces a zero cell, whose stress
                # is NaN and fails nequip-compile's eager-vs-compiled check
                "padding": 10.0,
                "override_cell": True,
            },
            {
                "_target_": "nequip.data.transforms.NeighborListTransform",
                "r_max": float(model_cfg["r_max"]),
            },
        ],
    }


def backbone_config(model_config: dict, replace: bool, path) -> dict:
    """The plain model's builder config (``_target_``, ``seed``, ... included).

    A model that already has a head is refused unless ``replace``; then its backbone's config is
    recovered (from :func:`EvidentialHeadOnModel` or an ``Evidential*NequIPGNNModel`` config).
    """
    cfg = dict(model_config)
    target = cfg["_target_"]
    if target not in _ATTACHED_BUILDERS and target not in _HEAD_BUILDERS:
        if "Evidential" in target:
            raise AttachError(f"{path}: unknown evidential model builder {target}")
        return cfg
    if not replace:
        kind = cfg.get("head", "e2ip")
        kind = kind.get("kind", "e2ip") if isinstance(kind, dict) else kind
        raise AttachError(
            f"{path} already has an evidential '{kind}' head ({target}); pass --replace to "
            "train a new head on its backbone"
        )
    if target in _ATTACHED_BUILDERS:
        shared = {k: cfg[k] for k in _TOP_LEVEL_ARGS if cfg.get(k) is not None}
        return {**dict(cfg["backbone"]), **shared}
    plain = {k: v for k, v in cfg.items() if k not in _HEAD_ARGS}
    plain["_target_"] = _HEAD_BUILDERS[target]
    return plain


def attached_model_config(
    backbone: dict, config: HeadConfig, feature_layer: int | str | None
) -> dict:
    """The :func:`EvidentialHeadOnModel` config around a plain builder config."""
    inner = {k: v for k, v in backbone.items() if k not in _TOP_LEVEL_ARGS}
    top = {k: backbone[k] for k in _TOP_LEVEL_ARGS if backbone.get(k) is not None}
    missing = [k for k in ("seed", "model_dtype", "type_names", "r_max") if k not in top]
    if missing:
        raise AttachError(f"the model config lacks {missing}; it is not a NequIP model config")
    out = {
        "_target_": "eip_plugins.nequip.model.EvidentialHeadOnModel",
        **top,
        "head": config.kind,
        "head_options": {k: v for k, v in config.to_dict().items() if k != "kind"},
    }
    if feature_layer is not None:  # None: the builder's default layer
        out["feature_layer"] = (
            feature_layer if isinstance(feature_layer, str) else int(feature_layer)
        )
    out["backbone"] = inner
    return out


def _sole_model(module_dict, path) -> nn.Module:
    from nequip.train.lightning import _SOLE_MODEL_KEY

    if _SOLE_MODEL_KEY not in module_dict or len(module_dict) != 1:
        raise AttachError(
            f"{path} holds several models ({list(module_dict)}); eip-attach supports "
            "single-model checkpoints"
        )
    return module_dict[_SOLE_MODEL_KEY]


def _init_global_state() -> None:
    """NequIP's global state (dtype, TF32) must be set before any model is built."""
    from nequip.utils.global_state import global_state_initialized, set_global_state

    if not global_state_initialized():
        set_global_state()


def load_original(path) -> nn.Module:
    """The saved model as NequIP loads it: a checkpoint's evaluation model (EMA weights) or a
    package's eager model, in evaluation mode."""
    from nequip.model import ModelFromCheckpoint, ModelFromPackage
    from nequip.model.modify_utils import only_apply_persistent_modifiers

    _init_global_state()
    if is_package(path):
        return _sole_model(ModelFromPackage(str(path)), path).eval()
    with only_apply_persistent_modifiers(persistent_only=True):
        model = _sole_model(ModelFromCheckpoint(str(path)), path)
    return model.eval()


# -- building the model with a head ---------------------------------------------------------------
def build_training_module(ck: dict, model_config: dict):
    """The checkpoint's training module class, re-instantiated with ``model_config``."""
    import hydra

    _init_global_state()
    hp = copy.deepcopy(ck["hyper_parameters"])
    hp["model"] = model_config
    hp["info_dict"]["training_module"]["model"] = copy.deepcopy(model_config)
    cls = hydra.utils.get_class(hp["info_dict"]["training_module"]["_target_"])
    return cls(**hp), hp


def _energy_network(force_model: nn.Module) -> nn.Module:
    """The SequentialGraphNetwork inside ``ForceStressOutput`` (or inside the head wrapper)."""
    inner = force_model.func
    return inner.func if hasattr(inner, "func") else inner


def copy_backbone(original: nn.Module, attached: nn.Module) -> None:
    """Copy every backbone weight of ``original`` (plain or evidential GraphModel) into
    ``attached``; the tap adds no state, so the energy networks' state dicts match key for key."""
    source = _energy_network(original.model)
    target = _energy_network(attached.model)
    try:
        target.load_state_dict(source.state_dict(), strict=True)
    except RuntimeError as err:
        raise AttachError(
            f"the rebuilt backbone does not match the checkpoint's weights: {err}"
        ) from err


def feature_layer_description(attached: nn.Module) -> str:
    """Which layers' node features the head reads, with their irreps."""
    network = _energy_network(attached.model)
    names = list(dict(network.named_children()))
    taps = [n for n in names if n == _fields.HEAD_FEATURES or _fields.is_partial_feature_field(n)]
    tapped = [names[names.index(n) - 1] for n in taps]
    tap = getattr(network, _fields.HEAD_FEATURES)
    irreps = tap.irreps_out[_fields.HEAD_FEATURES]
    layers = ", ".join(f"'{n}'" for n in tapped)
    description = f"node features of {layers} ({irreps})"
    if type(tap).__name__ == "EdgeFeatureTap":
        description = f"per-atom sums of the edge latents of {layers} ({irreps})"
    geometry = attached.model.head.geometry
    if geometry is not None:
        h = geometry.channels
        description += f" + {h}x1o + {h}x2e built from the neighbour list"
    return description


def _predict(model: nn.Module, frames, forces_key: str) -> dict[str, torch.Tensor]:
    from nequip.data import AtomicDataDict

    out = {"energy": [], "forces": []}
    for batch, _ in frames_to_batches(model, frames, forces_key, batch_size=len(frames)):
        result = model(batch)
        out["energy"].append(result[AtomicDataDict.TOTAL_ENERGY_KEY].detach())
        out["forces"].append(result[AtomicDataDict.FORCE_KEY].detach())
    return {k: torch.cat(v) for k, v in out.items()}


def check_identical(original: nn.Module, attached: nn.Module, frames, forces_key: str) -> None:
    """RuntimeError unless energies and forces are bit-identical on ``frames``."""
    a = _predict(original, frames, forces_key)
    b = _predict(attached, frames, forces_key)
    require_identical_predictions(a, b)


# -- the whole job ----------------------------------------------------------------------------------
def attach_head(
    model_path,
    train_file,
    output,
    head: str = "e2ip",
    valid_file=None,
    replace: bool = False,
    forces_key: str = "REF_forces",
    feature_layer: int | str | None = None,
    head_options: dict | None = None,
    max_epochs: int = 200,
    patience: int = 50,
    lr: float = 5e-3,
    batch_size: int = 16,
    seed: int = 0,
    max_atoms_in_memory: int = 2_000_000,
    progress: bool = True,
    calibration: CalibrationSettings | None = None,
) -> dict[str, Any]:
    """Attach, train, fit the feature statistics and recalibration (``calibration``, default
    :class:`CalibrationSettings`), verify and save. Returns a before/after report on the
    validation data.

    ``feature_layer``: the convnet layer whose node features the head reads, or ``"all"``; unset,
    every layer's (``"all"``, written into the checkpoint's model config) on a NequIP model and
    the per-atom sums of the edge latents on an Allegro one.

    The input checkpoint is only read. The output (a ``.ckpt``) is written to a temporary file
    beside it, reloaded and checked (energies and forces equal the input model's), then renamed
    into place; it may not be the input file.
    """
    from ase.data import atomic_numbers

    check_output_path(model_path, output)
    if not str(output).endswith(".ckpt"):
        raise AttachError(
            f"--output {output}: eip-attach nequip writes a checkpoint; give a '.ckpt' path "
            "(package it afterwards with `nequip-package build`)"
        )
    config = HeadConfig(kind=head, **(head_options or {}))
    if is_package(model_path):
        ck = checkpoint_from_package(model_path, train_file, valid_file, forces_key)
    else:
        ck = load_checkpoint(model_path)
    backbone = backbone_config(ck["hyper_parameters"]["model"], replace, model_path)
    types = list(backbone["type_names"])
    unknown_types = [t for t in types if t not in atomic_numbers]
    if unknown_types:
        raise AttachError(
            f"the model's type names {unknown_types} are not chemical symbols; eip-attach maps "
            "each element to the type of the same name"
        )
    known = {atomic_numbers[t] for t in types}
    train_frames = read_labelled(train_file, forces_key, known)
    valid_frames = read_labelled(valid_file, forces_key, known) if valid_file else None

    original = load_original(model_path)
    from .model import ALL_LAYERS, convnet_layer_names

    if feature_layer is None and convnet_layer_names(_energy_network(original.model)):
        feature_layer = ALL_LAYERS  # written into the checkpoint: the builder's default differs
    model_config = attached_model_config(backbone, config, feature_layer)
    try:
        module, hp = build_training_module(ck, model_config)
    except ValueError as err:  # e.g. feature_layer out of range, no 1o features
        raise AttachError(str(err)) from err
    attached = _sole_model(module.model, model_path)
    copy_backbone(original, attached)
    attached.eval()
    for p in attached.parameters():
        p.requires_grad_(False)
    check_frames = (valid_frames or train_frames)[:4]
    check_identical(original, attached, check_frames, forces_key)

    torch.manual_seed(seed)
    head_module = attached.model.head
    budget = {
        "max_atoms_in_memory": max_atoms_in_memory,
        "with_edges": head_module.geometry is not None,
    }
    train = extract_features(attached, train_frames, forces_key, batch_size, **budget)
    valid = (
        extract_features(attached, valid_frames, forces_key, batch_size, **budget)
        if valid_frames
        else None
    )
    for p in head_module.parameters():
        p.requires_grad_(True)
    report = train_attached_head(
        head_module,
        train,
        valid,
        max_epochs=max_epochs,
        lr=lr,
        patience=patience,
        seed=seed,
        progress=progress,
        calibration=calibration or CalibrationSettings(),
    )
    head_module.eval()
    _sync_ema(module)

    def write(tmp: str) -> None:
        # no optimizer state: it belonged to the backbone's training, not to this model
        out = {k: v for k, v in ck.items() if k not in ("optimizer_states", "lr_schedulers")}
        out["state_dict"] = module.state_dict()
        out["hyper_parameters"] = hp
        torch.save(out, tmp)

    def verify(tmp: str) -> None:
        check_identical(original, load_original(tmp), check_frames, forces_key)

    atomic_write(output, write, verify)
    return {
        "head": head,
        "features": feature_layer_description(attached),
        **report,
        "output": str(output),
    }


def _sync_ema(module) -> None:
    """Make the EMA copy (what NequIP evaluates) equal the weights just set."""
    ema = getattr(module, "ema", None)
    if ema is None:
        return
    ema.num_updates = 0
    ema.update_parameters(module.model)  # the first update copies
