"""Evaluate an uncertainty calculator on labelled structures (SPEC §3 metrics)."""

from __future__ import annotations

import numpy as np
import torch

from .core import keys
from .core.metrics import force_error, uncertainty_report
from .core.predictive import params_from_fields, predictive_distribution


def collect_predictions(calculator, frames, forces_key: str = "REF_forces") -> dict:
    """Run ``calculator`` on every frame and stack per-atom results.

    Returns numpy arrays over all atoms: ``forces`` (N, 3), ``forces_ref`` (N, 3), ``sigma``
    (N,), ``batch`` (N,), the raw evidential fields, ``forces_feature_distance`` (N,) when the
    calculator gives it, and per-structure ``uncertainty`` (G,).
    """
    rows: dict[str, list] = {"forces": [], "forces_ref": [], "sigma": [], "batch": []}
    structure_sigma = []
    for g, frame in enumerate(frames):
        if forces_key not in frame.arrays:
            raise KeyError(f"frame {g} has no reference forces under arrays[{forces_key!r}]")
        atoms = frame.copy()
        atoms.calc = calculator
        rows["forces"].append(atoms.get_forces())
        res = calculator.results
        rows["forces_ref"].append(frame.arrays[forces_key])
        rows["sigma"].append(res[keys.FORCES_UNCERTAINTY])
        rows["batch"].append(np.full(len(atoms), g))
        structure_sigma.append(res[keys.UNCERTAINTY])
        for key in (*keys.RAW_PARAMETER_KEYS, keys.FORCES_FEATURE_DISTANCE):
            if key in res:
                rows.setdefault(key, []).append(res[key])
    out = {k: np.concatenate(v) for k, v in rows.items()}
    out["uncertainty"] = np.asarray(structure_sigma)
    return out


def evaluate_predictions(pred: dict) -> dict:
    """SPEC §3 report (force MAE/RMSE, Spearman, ROC-AUC, NLL, CE, area, ES) of stacked results."""
    forces = torch.as_tensor(pred["forces"], dtype=torch.float64)
    ref = torch.as_tensor(pred["forces_ref"], dtype=torch.float64)
    dist = predictive_distribution(params_from_fields(pred, pred["forces"]))
    batch = torch.as_tensor(pred["batch"])
    report = uncertainty_report(
        dist,
        forces,
        ref,
        torch.as_tensor(pred["sigma"], dtype=torch.float64),
        batch=batch,
        num_graphs=int(batch.max()) + 1,
    )
    report["error"] = force_error(forces, ref).numpy()
    report["sigma"] = np.asarray(pred["sigma"])
    report["mean_uncertainty"] = float(np.mean(pred["uncertainty"]))
    report["mean_error"] = float(np.mean(report["error"]))
    if "forces_feature_distance" in pred:
        report["mean_feature_distance"] = float(np.mean(pred["forces_feature_distance"]))
    return report
