"""``eip-attach mace``: give an already trained MACE model an evidential head.

The backbone is frozen: its node features and forces are computed once with MACE's own data
pipeline (``config_from_atoms`` -> ``AtomicData`` -> batches), cached (streamed to disk past a
memory budget), and only the head is trained on them with the SPEC force loss (the energy term is
dropped: the backbone's energy is fixed), early-stopped on the validation predictive NLL. The
result is an :class:`~eip_plugins.mace.model.EvidentialMACE` whose backbone is the input model
object itself, so its energies and forces are bit-identical; every tool of this package accepts
it (``MACEUQCalculator``, ``mace_eval_configs``, TorchScript compilation).

Works for models trained with plain ``mace_run_train``, multi-head / foundation-style models
given as a local file (pick the head with ``mace_head``), and models whose last layer carries
scalars only (MACE's default): the head reads the vector (1o) features of the earlier layers in
MACE's concatenated ``node_feats`` (see :mod:`eip_plugins.mace.model`). Scalar-only models
(``--max_L=0``, one layer) get a head that builds its vector features from the geometry; the
neighbour list is then cached with the features.
"""

from __future__ import annotations

import logging
from pathlib import Path

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
from ..core.head_base import reads_geometry
from .calculator import load_model
from .features import extract_features, frames_to_batches
from .heads import select_mace_head

log = logging.getLogger(__name__)


def geometric_description(head: nn.Module) -> str:
    """`` + HxIo + Hx2e built from the geometry`` for a head with a geometric front end."""
    if getattr(head, "geometry", None) is None:
        return ""
    h = head.geometry.channels
    return f" + {h}x1o + {h}x2e built from the neighbour list"


def load_backbone(path, replace: bool = False) -> nn.Module:
    """Load an eager MACE model file; refuse non-MACE files and models that already have a head.

    With ``replace``, a model that already has an evidential head gives back its backbone, which
    keeps the MACE head the old evidential head was fit to as ``eip_previous_mace_head``.
    """
    path = Path(path)
    try:
        model = load_model(path)
    except FileNotFoundError as err:
        raise AttachError(str(err)) from err
    except ValueError as err:
        raise AttachError(str(err)) from err
    if isinstance(model, torch.jit.ScriptModule):
        raise AttachError(
            f"{path} is a TorchScript-compiled model; give the eager '*.model' file instead"
        )
    if hasattr(model, "head") and hasattr(model, "eip_head_kind"):
        if not replace:
            raise AttachError(
                f"{path} already has an evidential '{model.eip_head_kind}' head; pass --replace "
                "to train a new head on its backbone"
            )
        previous = getattr(model, "eip_mace_head", "") or None
        model = model.model
        model.eip_previous_mace_head = previous
    if not isinstance(model, nn.Module) or not all(
        hasattr(model, a) for a in ("products", "atomic_numbers", "r_max")
    ):
        raise AttachError(f"{path} does not contain a MACE model (got {type(model).__name__})")
    return model


def _predict(model: nn.Module, frames, forces_key: str, mace_head: str | None) -> dict:
    """Energies (G,) and forces (N, 3) of a MACE model (plain or with a head) on ``frames``."""
    backbone = model.model if hasattr(model, "eip_head_kind") else model
    out = {"energy": [], "forces": []}
    for batch in frames_to_batches(backbone, frames, forces_key, mace_head, len(frames)):
        result = model(batch.to_dict(), training=False, compute_force=True)
        out["energy"].append(result["energy"].detach())
        out["forces"].append(result["forces"].detach())
    return {k: torch.cat(v) for k, v in out.items()}


def check_identical(original_path, written_path, frames, forces_key, mace_head, replace) -> None:
    """RuntimeError unless the written model reproduces the input model's energies and forces
    bit for bit (both loaded from disk, as a user loads them)."""
    original = load_backbone(original_path, replace=replace)
    written = torch.load(written_path, map_location="cpu", weights_only=False)
    a = _predict(original.eval(), frames, forces_key, mace_head)
    b = _predict(written.eval(), frames, forces_key, mace_head)
    require_identical_predictions(a, b)


def attach_head(
    model_path,
    train_file,
    output,
    head: str = "e2ip",
    valid_file=None,
    replace: bool = False,
    forces_key: str = "REF_forces",
    mace_head: str | None = None,
    head_options: dict | None = None,
    max_epochs: int = 200,
    patience: int = 50,
    lr: float = 5e-3,
    batch_size: int = 16,
    seed: int = 0,
    max_atoms_in_memory: int = 2_000_000,
    progress: bool = True,
    calibration: CalibrationSettings | None = None,
) -> dict:
    """Attach, train, fit the feature statistics and recalibration (``calibration``, default
    :class:`CalibrationSettings`), and save. Returns a before/after report on the validation data.

    The input model file is only read. The output is written to a temporary file in the same
    folder and renamed into place, and may not be the input file.
    """
    from .model import EvidentialMACE, node_feats_irreps

    check_output_path(model_path, output)
    config = HeadConfig(kind=head, **(head_options or {}))
    backbone = load_backbone(model_path, replace=replace)
    if mace_head is None:  # --replace: by default the MACE head the old head was fit to
        mace_head = backbone.__dict__.pop("eip_previous_mace_head", None)
    backbone.__dict__.pop("eip_previous_mace_head", None)
    known = {int(z) for z in backbone.atomic_numbers}
    train_frames = read_labelled(train_file, forces_key, known)
    valid_frames = read_labelled(valid_file, forces_key, known) if valid_file else None
    for p in backbone.parameters():
        p.requires_grad_(False)

    torch.manual_seed(seed)
    try:
        edges = reads_geometry(config, node_feats_irreps(backbone))
    except ValueError as err:  # geometric_features=never on a scalar-only model
        raise AttachError(f"{model_path}: {err}") from None
    budget = {"max_atoms_in_memory": max_atoms_in_memory, "with_edges": edges}
    train = extract_features(backbone, train_frames, forces_key, mace_head, batch_size, **budget)
    valid = (
        extract_features(backbone, valid_frames, forces_key, mace_head, batch_size, **budget)
        if valid_frames
        else None
    )
    model = EvidentialMACE(backbone, config)
    # the evidential head is fit to this MACE head's forces: calculators default to it
    model.eip_mace_head = select_mace_head(list(backbone.heads), mace_head)
    model.head.to(next(backbone.parameters()).dtype)
    report = train_attached_head(
        model.head,
        train,
        valid,
        max_epochs=max_epochs,
        lr=lr,
        patience=patience,
        seed=seed,
        progress=progress,
        calibration=calibration or CalibrationSettings(),
    )
    model.eval()
    check_frames = (valid_frames or train_frames)[:4]
    atomic_write(
        output,
        lambda tmp: torch.save(model, tmp),
        lambda tmp: check_identical(model_path, tmp, check_frames, forces_key, mace_head, replace),
    )
    return {
        "head": head,
        # MACE's concatenated node_feats: every layer's output (the last one scalars only)
        "features": f"node_feats of all {len(backbone.products)} layers: {model.node_feats_irreps}"
        + geometric_description(model.head),
        "mace_head": model.eip_mace_head,
        **report,
        "output": str(output),
    }
