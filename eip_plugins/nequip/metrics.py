"""``val_metrics`` / ``test_metrics``: accuracy plus uncertainty quality, logged every epoch.

Usage::

    val_metrics:
      _target_: eip_plugins.nequip.EvidentialMetrics
      coeffs: {forces_mae: 1.0, total_energy_mae: 1.0}   # -> val0_epoch/weighted_sum

Uncertainty metrics (SPEC §3, per atom; the head kind is read from the model output):

- ``force_nll``: NLL of the reference force under the head's predictive distribution (nats);
- ``uncertainty_spearman``: Spearman rank correlation of sigma_i and |F_pred - F_ref|;
- ``uncertainty_roc_auc``: ROC-AUC of sigma_i as a detector of the 20 % largest force errors;
- ``calibration_error``: mean |observed - expected| coverage of the predictive credible regions;
- ``uncertainty_mean``: mean sigma_i (eV/A).

Rank and calibration metrics keep every atom's value for the epoch (``cat`` states, so they are
exact under DDP); they are computed with :mod:`eip_plugins.core.metrics` (torchmetrics / numpy).
"""

from typing import Any, Dict, List, Optional

import torch
from nequip.data import AtomicDataDict, PerAtomModifier
from nequip.data.stats import _MeanX
from nequip.train import MeanAbsoluteError, MetricsManager, RootMeanSquaredError
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from eip_plugins.core import keys
from eip_plugins.core.metrics import calibration, force_error, roc_auc, spearman
from eip_plugins.core.predictive import predictive_distribution

from .loss import params_from_output, reference_forces


def _evaluation_inputs(preds, target):
    """Head parameters and reference forces, detached, in float64."""
    params = params_from_output(preds)
    params = type(params)(*[t.detach().double() for t in params])
    return params, reference_forces(target).detach().double()


class ForceNLL(_MeanX):
    """Mean over atoms of -log p(F_ref) under the predictive distribution (nats per atom)."""

    full_state_update = False

    def update(self, preds: AtomicDataDict.Type, target: AtomicDataDict.Type) -> None:
        params, forces_ref = _evaluation_inputs(preds, target)
        super().update(predictive_distribution(params).nll(forces_ref))

    def __str__(self) -> str:
        return "force_nll"


class _ErrorUncertaintyMetric(Metric):
    """Collects per-atom (sigma_i, |F_pred - F_ref|) over the epoch."""

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("sigma", default=[], dist_reduce_fx="cat")
        self.add_state("error", default=[], dist_reduce_fx="cat")

    def update(self, preds: AtomicDataDict.Type, target: AtomicDataDict.Type) -> None:
        params_from_output(preds)  # clear error for a model without a head
        err = force_error(
            preds[AtomicDataDict.FORCE_KEY].detach().double(), reference_forces(target).double()
        )
        self.sigma.append(preds[keys.FORCES_UNCERTAINTY].detach().reshape(-1).double())
        self.error.append(err.detach().reshape(-1).double())

    def _values(self) -> tuple[Tensor, Tensor]:
        return dim_zero_cat(self.sigma).cpu(), dim_zero_cat(self.error).cpu()


class UncertaintySpearman(_ErrorUncertaintyMetric):
    """Spearman rank correlation between sigma_i and the force error (1 = perfect ranking)."""

    def compute(self) -> Tensor:
        sigma, error = self._values()
        return torch.tensor(spearman(sigma, error), dtype=torch.float64)

    def __str__(self) -> str:
        return "uncertainty_spearman"


class UncertaintyROCAUC(_ErrorUncertaintyMetric):
    """ROC-AUC of sigma_i for the ``top_fraction`` largest force errors (Tan et al. 2023)."""

    def __init__(self, top_fraction: float = 0.2, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 < top_fraction < 1.0:
            raise ValueError(f"invalid top_fraction={top_fraction!r}: must lie in (0, 1)")
        self.top_fraction = top_fraction

    def compute(self) -> Tensor:
        sigma, error = self._values()
        if sigma.numel() < 2:
            return torch.tensor(float("nan"), dtype=torch.float64)
        return torch.tensor(roc_auc(sigma, error, self.top_fraction), dtype=torch.float64)

    def __str__(self) -> str:
        return "uncertainty_roc_auc"


class CalibrationError(Metric):
    """Mean over confidence levels p of |fraction of F_ref inside the p-region - p|.

    ``mc_samples``: Monte Carlo samples per atom of the eIP head's credible levels (its
    predictive distribution has no closed-form credible regions); e2IP and MVE are exact.
    """

    full_state_update = False

    def __init__(self, mc_samples: int = 4000, **kwargs):
        super().__init__(**kwargs)
        self.mc_samples = int(mc_samples)
        self.add_state("levels", default=[], dist_reduce_fx="cat")

    def update(self, preds: AtomicDataDict.Type, target: AtomicDataDict.Type) -> None:
        params, forces_ref = _evaluation_inputs(preds, target)
        distribution = predictive_distribution(params, n_mc=self.mc_samples)
        levels = distribution.credible_level(forces_ref)
        self.levels.append(levels.reshape(-1).double().to(self.device))

    def compute(self) -> Tensor:
        return torch.tensor(calibration(dim_zero_cat(self.levels))["ce"], dtype=torch.float64)

    def __str__(self) -> str:
        return "calibration_error"


class MeanUncertainty(_MeanX):
    """Mean per-atom sigma_i, eV/A."""

    full_state_update = False

    def update(self, preds: AtomicDataDict.Type, target: AtomicDataDict.Type) -> None:
        super().update(preds[keys.FORCES_UNCERTAINTY].detach())

    def __str__(self) -> str:
        return "uncertainty_mean"


_DEFAULT_COEFFS = {"total_energy_mae": 1.0, "forces_mae": 1.0}


def EvidentialMetrics(
    coeffs: Optional[Dict[str, Optional[float]]] = None,
    top_fraction: float = 0.2,
    type_names: Optional[List[str]] = None,
    extra_metrics: Optional[List[Dict[str, Any]]] = None,
    calibration_mc_samples: int = 1000,
) -> MetricsManager:
    """``MetricsManager`` with energy/force errors and the uncertainty metrics.

    Args:
        coeffs: coefficients of the ``weighted_sum`` (e.g. what ``ModelCheckpoint`` monitors);
            keys among ``total_energy_mae``, ``total_energy_rmse``, ``per_atom_energy_mae``,
            ``forces_mae``, ``forces_rmse``, ``force_nll``, ``calibration_error``
            (default ``{total_energy_mae: 1, forces_mae: 1}``).
        top_fraction: fraction of largest errors that are positives for the ROC-AUC.
        type_names: passed by NequIP (unused).
        extra_metrics: further ``MetricsManager`` entries.
        calibration_mc_samples: Monte Carlo samples per atom of the eIP head's calibration error
            (computed every validation epoch; 1000 resolve a credible level to ~0.016 per atom,
            averaged over every validation atom; the benchmark's and ``eip-calibrate``'s
            evaluations use 4000). Unused by e2IP and MVE, whose levels are exact.
    """
    if int(calibration_mc_samples) < 100:
        raise ValueError(
            f"invalid calibration_mc_samples={calibration_mc_samples!r}: must be >= 100"
        )
    coeffs = dict(_DEFAULT_COEFFS if coeffs is None else coeffs)
    energy = AtomicDataDict.TOTAL_ENERGY_KEY
    forces = AtomicDataDict.FORCE_KEY
    entries = [
        ("total_energy_mae", energy, MeanAbsoluteError()),
        ("total_energy_rmse", energy, RootMeanSquaredError()),
        ("per_atom_energy_mae", PerAtomModifier(energy), MeanAbsoluteError()),
        ("forces_mae", forces, MeanAbsoluteError()),
        ("forces_rmse", forces, RootMeanSquaredError()),
        ("force_nll", None, ForceNLL()),
        ("uncertainty_spearman", None, UncertaintySpearman()),
        ("uncertainty_roc_auc", None, UncertaintyROCAUC(top_fraction)),
        ("calibration_error", None, CalibrationError(calibration_mc_samples)),
        ("uncertainty_mean", None, MeanUncertainty()),
    ]
    unknown = sorted(set(coeffs) - {name for name, _, _ in entries})
    if unknown:
        raise ValueError(f"unknown coeffs key(s) {unknown} for EvidentialMetrics")
    metrics = []
    for name, field, metric in entries:
        entry = {"name": name, "metric": metric, "coeff": coeffs.get(name)}
        if field is not None:
            entry["field"] = field
        metrics.append(entry)
    return MetricsManager(metrics + list(extra_metrics or []), type_names=type_names)
