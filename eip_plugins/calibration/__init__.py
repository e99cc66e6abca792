"""Fit a trained head's per-element feature statistics, output range and recalibration scale
(``eip-calibrate``, and automatically at the end of ``mace_run_train --head``, ``nequip-train``
and ``eip-attach``)."""

from .fit import (
    DEFAULT_NEIGHBOURS,
    RECALIBRATION_CHOICES,
    CalibrationSettings,
    calibrate_head,
    calibrate_or_keep,
    fit_training_statistics,
    head_predictions,
)

__all__ = [
    "DEFAULT_NEIGHBOURS",
    "RECALIBRATION_CHOICES",
    "CalibrationSettings",
    "calibrate_head",
    "calibrate_or_keep",
    "fit_training_statistics",
    "head_predictions",
]
