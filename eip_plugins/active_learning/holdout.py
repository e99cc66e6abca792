"""Score a generation's model on a held-out labelled set: does active learning help?"""

from __future__ import annotations

import numpy as np
import torch

from ..core.metrics import spearman
from ..evaluation import collect_predictions
from .labelling import FORCES_KEY


def evaluate_holdout(calculator, frames: list, forces_key: str = FORCES_KEY) -> dict:
    """Force error and uncertainty of ``calculator`` on labelled ``frames``.

    Returns:
        ``force_mae`` and ``force_rmse`` (per Cartesian component, eV/A), ``mean_sigma``
        (mean per-atom sigma_i, eV/A) and ``spearman`` (per-atom sigma_i vs force error).
    """
    pred = collect_predictions(calculator, frames, forces_key)
    diff = pred["forces"] - pred["forces_ref"]
    error = np.linalg.norm(diff, axis=1)
    return {
        "force_mae": float(np.abs(diff).mean()),
        "force_rmse": float(np.sqrt((diff**2).mean())),
        "mean_sigma": float(pred["sigma"].mean()),
        "spearman": float(spearman(torch.as_tensor(pred["sigma"]), torch.as_tensor(error))),
    }
