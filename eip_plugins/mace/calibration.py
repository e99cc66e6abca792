"""Feature statistics and recalibration for MACE models with a head.

- :func:`calibrate_on_final_load`: at the end of ``mace_run_train --head=...`` (installed by
  :mod:`.registration` around ``mace.tools.train``), every model MACE loads back from its
  checkpoints to save (stage one, and stage two with ``--swa``) is calibrated on the run's own
  training and validation loaders *before* ``<name>.model`` and ``<name>_compiled.model`` are
  written, so both files carry it.
- :func:`calibrate_model`: ``eip-calibrate mace`` — (re)fit a saved ``*.model`` that already has
  a head; the backbone and the head's weights are untouched, the output is verified and written
  atomically, the input file is only read.
"""

from __future__ import annotations

import torch

from ..attach import AttachError, atomic_write, check_output_path, read_labelled
from ..calibration import CalibrationSettings, calibrate_head, calibrate_or_keep
from .features import feature_chunks, frames_to_batches


def calibrate_on_final_load(
    checkpoint_handler, train_loader, valid_loaders: dict, device, settings: CalibrationSettings
) -> None:
    """Wrap ``checkpoint_handler.load_latest`` so that each model it loads after training is
    calibrated (feature statistics on ``train_loader``, scale c on every validation loader)."""
    if not settings.density and settings.recalibrate == "none":
        return
    load_latest = checkpoint_handler.load_latest

    def load_latest_and_calibrate(state, *args, **kwargs):
        epoch = load_latest(state, *args, **kwargs)
        model = state.model
        if epoch is not None and hasattr(model, "eip_head_config"):
            calibrate_loaded_model(model, train_loader, valid_loaders, device, settings)
        return epoch

    checkpoint_handler.load_latest = load_latest_and_calibrate


def calibrate_loaded_model(model, train_loader, valid_loaders: dict, device, settings):
    """Calibrate an :class:`~eip_plugins.mace.model.EvidentialMACE` on MACE data loaders (a
    failure leaves the head as trained and is logged: the run still saves its model)."""
    backbone = model.model
    edges = getattr(model.head, "geometry", None) is not None

    def valid_chunks():
        for loader in (valid_loaders or {}).values():
            yield from feature_chunks(
                backbone, loader, device, labelled_only=True, with_edges=edges
            )

    train_chunks = feature_chunks(backbone, train_loader, device, with_edges=edges)
    return calibrate_or_keep(model.head, train_chunks, valid_chunks(), settings)  # logs it


def load_model_with_head(path):
    """A MACE ``*.model`` with an evidential head; AttachError for anything else."""
    from .attach import load_backbone

    try:
        load_backbone(path)  # clear errors for missing / non-MACE / compiled files
    except AttachError as err:
        if "already has an evidential" not in str(err):
            raise
        return torch.load(path, map_location="cpu", weights_only=False)
    raise AttachError(
        f"{path} is a plain MACE model without an evidential head: give it one with "
        "`eip-attach mace` (which also calibrates it) or train it with --head"
    )


def calibrate_model(
    model_path,
    train_file,
    valid_file,
    output,
    forces_key: str = "REF_forces",
    mace_head: str | None = None,
    batch_size: int = 16,
    settings: CalibrationSettings | None = None,
) -> dict:
    """``eip-calibrate mace``: refit the statistics and scale of a saved model with a head."""
    from .attach import check_identical

    check_output_path(model_path, output)
    model = load_model_with_head(model_path)
    backbone = model.model
    mace_head = mace_head or getattr(model, "eip_mace_head", "") or None
    known = {int(z) for z in backbone.atomic_numbers}
    train_frames = read_labelled(train_file, forces_key, known)
    valid_frames = read_labelled(valid_file, forces_key, known) if valid_file else None
    for p in model.parameters():
        p.requires_grad_(False)

    edges = getattr(model.head, "geometry", None) is not None

    def chunks(frames):
        batches = frames_to_batches(backbone, frames, forces_key, mace_head, batch_size)
        return feature_chunks(backbone, batches, with_edges=edges)

    report = calibrate_head(
        model.head,
        chunks(train_frames),
        chunks(valid_frames) if valid_frames else None,
        settings or CalibrationSettings(),
    )
    model.eval()
    check_frames = (valid_frames or train_frames)[:4]
    atomic_write(
        output,
        lambda tmp: torch.save(model, tmp),
        lambda tmp: check_identical(model_path, tmp, check_frames, forces_key, mace_head, True),
    )
    return {"head": model.eip_head_kind, **report, "output": str(output)}
