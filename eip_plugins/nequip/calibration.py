"""Feature statistics and recalibration for NequIP models with a head.

- :class:`UncertaintyCalibration`: a Lightning callback for ``nequip-train`` (``config_with_eip``
  lists it under ``trainer.callbacks``). When fitting ends (before ``test`` runs on
  ``best.ckpt``) it loads the evaluation model of every checkpoint the ``ModelCheckpoint``
  callbacks wrote (``best.ckpt``, ``last.ckpt``) exactly as NequIP loads it for inference (EMA
  weights), fits the head's per-type feature statistics on the training data and the scale c on
  the validation data, and writes the new head buffers back into that checkpoint (atomically).
  Everything downstream (``test``, ``nequip-package``, ``nequip-compile``, restarts) then carries
  them.
- :func:`calibrate_checkpoint`: ``eip-calibrate nequip`` on a saved checkpoint with a head.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

from ..attach import AttachError, atomic_write, check_output_path, read_labelled
from ..calibration import CalibrationSettings, calibrate_head, calibrate_or_keep
from ..core.feature_density import (
    DEFAULT_FORCE_PRIOR,
    DEFAULT_POWER,
    DEFAULT_SHRINKAGE,
    DEFAULT_STRENGTH,
)
from .features import feature_chunks, frames_to_batches, loader_batches
from .head_module import evidential_head_outputs

log = logging.getLogger(__name__)

_HEAD_BUFFERS = (".density.", ".output_range.", ".variance_scale.")


def head_of(model: torch.nn.Module) -> torch.nn.Module:
    """The core head inside a NequIP model with a head (ValueError for a plain model)."""
    outputs = evidential_head_outputs(model)
    if not outputs:
        raise ValueError("the model has no evidential head")
    return outputs[0].head


def head_buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The fitted head state of ``model``: feature statistics and variance scale, by name."""
    return {
        name: buf.detach().cpu().clone()
        for name, buf in model.named_buffers()
        if any(part in f".{name}" for part in _HEAD_BUFFERS)
    }


def store_head_buffers(state_dict: dict, buffers: dict[str, torch.Tensor]) -> None:
    """Write ``buffers`` (names relative to the evaluation model, e.g.
    ``model.head.density.mean``) into the ``state_dict`` of a single-model NequIP checkpoint
    (``model.sole_model.<name>``), in the dtype the checkpoint keeps them in. Keys a checkpoint
    of an older version lacks are added."""
    from nequip.train.lightning import _SOLE_MODEL_KEY

    for name, value in buffers.items():
        key = f"model.{_SOLE_MODEL_KEY}.{name}"
        dtype = state_dict[key].dtype if key in state_dict else value.dtype
        state_dict[key] = value.to(dtype)


def _number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"invalid {name}={value!r}: must be a number")
    return float(value)


def _whole_number(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"invalid {name}={value!r}: must be a whole number")
    return value


class UncertaintyCalibration(Callback):
    """Fit feature statistics, output range and recalibration into the checkpoints at the end of
    training.

    Args:
        density: fit the per-type feature statistics (density-aware evidence and the
            ``forces_feature_distance`` output).
        strength, power: a and p of the evidence factor 1 / (1 + a r^(2p)).
        recalibrate: ``"nll"`` (default), ``"ce"`` or ``"none"``: the objective of the scale c
            fitted on the validation data.
        shrinkage: minimum covariance shrinkage toward the diagonal.
        output_range: clamp the head's learned outputs to their range over the training atoms
            (``False``: the head extrapolates them out of distribution).
        neighbours: also store a random sample of up to this many training atoms per type and
            add the distance to the nearest of them to the feature distance (0: the Gaussian
            distance only; default ``null``: 4096 with ``density``, 0 without).
        force_prior: k: far out of distribution sigma levels off at k times the RMS reference
            force component of the type's training atoms (0: unbounded growth).

    Usage (``trainer.callbacks`` of the config)::

        - _target_: eip_plugins.nequip.UncertaintyCalibration
          density: true         # per-type feature statistics
          power: 2.0            # evidence factor 1 / (1 + strength * r^(2 power))
          recalibrate: nll      # nll | ce | none
          output_range: true    # learned outputs bounded by their training range
          neighbours: 4096      # training atoms per type for the neighbour distance (0: off)
          force_prior: 8.0      # sigma levels off at 8x the RMS training force (0: off)
    """

    def __init__(
        self,
        density: bool = True,
        strength: float = DEFAULT_STRENGTH,
        power: float = DEFAULT_POWER,
        recalibrate: str = "nll",
        shrinkage: float = DEFAULT_SHRINKAGE,
        output_range: bool = True,
        neighbours: int | None = None,
        force_prior: float = DEFAULT_FORCE_PRIOR,
    ):
        super().__init__()
        for name, value in (("density", density), ("output_range", output_range)):
            if not isinstance(value, bool):  # bool("false") would be True
                raise ValueError(
                    f"UncertaintyCalibration: invalid {name}={value!r}: must be true or false"
                )
        try:
            self.settings = CalibrationSettings(
                density=bool(density),
                strength=float(strength),
                power=float(power),
                recalibrate=recalibrate,
                shrinkage=float(shrinkage),
                output_range=bool(output_range),
                neighbours=None if neighbours is None else _whole_number("neighbours", neighbours),
                force_prior=_number("force_prior", force_prior),
            )
        except ValueError as err:
            raise ValueError(f"UncertaintyCalibration: {err}") from None
        self.reports: dict[str, dict] = {}

    def on_fit_end(self, trainer, pl_module) -> None:
        if trainer.global_rank == 0:
            self._calibrate_checkpoints(trainer, pl_module)
        # under DDP the other ranks wait: a later `test` run reads best.ckpt
        trainer.strategy.barrier("eip_uncertainty_calibration")

    def _calibrate_checkpoints(self, trainer, pl_module) -> None:
        paths = []
        for cb in trainer.checkpoint_callbacks:
            for path in (getattr(cb, "best_model_path", ""), getattr(cb, "last_model_path", "")):
                if path and Path(path).is_file() and path not in paths:
                    paths.append(path)
        if not paths:
            log.warning("UncertaintyCalibration: no checkpoint was written; nothing calibrated")
            return
        datamodule = trainer.datamodule
        device = pl_module.device
        for path in paths:
            self.reports[path] = calibrate_checkpoint_in_place(
                path,
                lambda: loader_batches(datamodule.train_dataloader(), device),
                lambda: _all_val_batches(datamodule, device),
                self.settings,
                device,
            )


def _all_val_batches(datamodule, device):
    loaders = datamodule.val_dataloader()
    for loader in loaders if isinstance(loaders, (list, tuple)) else [loaders]:
        yield from loader_batches(loader, device)


def calibrate_checkpoint_in_place(path, train_batches, valid_batches, settings, device) -> dict:
    """Calibrate the evaluation model of checkpoint ``path`` and rewrite ``path`` with the new
    head buffers (atomically; every other entry of the checkpoint is kept)."""
    from .attach import load_original

    model = load_original(path).to(device)
    head = head_of(model)
    edges = head.geometry is not None
    report = calibrate_or_keep(
        head,
        feature_chunks(model, train_batches(), edges),
        feature_chunks(model, valid_batches(), edges),
        settings,
    )
    if report is None:  # logged; the checkpoint stays as it was written
        return {}
    ck = torch.load(path, map_location="cpu", weights_only=False)
    store_head_buffers(ck["state_dict"], head_buffers(model))
    atomic_write(path, lambda tmp: torch.save(ck, tmp))
    log.info(
        "eip head of %s: feature statistics %s, c = %.4g (%.1f s)",
        path,
        report.get("statistics", "off"),
        report["variance_scale"],
        report["seconds"],
    )
    return report


def calibrate_checkpoint(
    model_path,
    train_file,
    valid_file,
    output,
    forces_key: str = "REF_forces",
    batch_size: int = 16,
    settings: CalibrationSettings | None = None,
) -> dict:
    """``eip-calibrate nequip``: refit the statistics and scale of a checkpoint with a head and
    write a new checkpoint (verified: the same energies and forces as the input)."""
    from ase.data import atomic_numbers

    from .attach import check_identical, load_checkpoint, load_original

    check_output_path(model_path, output)
    if not str(output).endswith(".ckpt"):
        raise AttachError(f"--output {output}: eip-calibrate nequip writes a '.ckpt' checkpoint")
    if str(model_path).endswith(".nequip.zip"):
        raise AttachError(
            f"{model_path} is a nequip-package file: calibrate the checkpoint it was built from, "
            "then package that"
        )
    ck = load_checkpoint(model_path)
    model = load_original(model_path)
    try:
        head = head_of(model)
    except ValueError:
        raise AttachError(
            f"{model_path} is a plain NequIP model without an evidential head: give it one with "
            "`eip-attach nequip` (which also calibrates it) or train it with config_with_eip"
        ) from None
    types = list(model.type_names)
    known = {atomic_numbers[t] for t in types if t in atomic_numbers}
    train_frames = read_labelled(train_file, forces_key, known)
    valid_frames = read_labelled(valid_file, forces_key, known) if valid_file else None

    def chunks(frames):
        batches = frames_to_batches(model, frames, forces_key, batch_size)
        return feature_chunks(model, batches, head.geometry is not None)

    report = calibrate_head(
        head,
        chunks(train_frames),
        chunks(valid_frames) if valid_frames else None,
        settings or CalibrationSettings(),
    )
    out = {k: v for k, v in ck.items()}
    out["state_dict"] = dict(ck["state_dict"])
    store_head_buffers(out["state_dict"], head_buffers(model))
    check_frames = (valid_frames or train_frames)[:4]
    original = load_original(model_path)

    def verify(tmp: str) -> None:
        check_identical(original, load_original(tmp), check_frames, forces_key)

    atomic_write(output, lambda tmp: torch.save(out, tmp), verify)
    return {"head": head_kind_of(model), **report, "output": str(output)}


def head_kind_of(model: torch.nn.Module) -> str:
    for m in model.modules():
        kind = getattr(m, "head_kind", None)
        if kind is not None:
            return kind
    raise ValueError("the model has no evidential head")
