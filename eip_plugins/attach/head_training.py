"""Train only an evidential head on cached backbone features (the energy term is dropped: the
backbone's energy is fixed), with early stopping on the validation predictive NLL."""

from __future__ import annotations

import copy
import logging
import math
import sys
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from ..calibration import CalibrationSettings, calibrate_head
from ..core.metrics import calibration, force_error, roc_auc, spearman
from ..core.predictive import predictive_distribution
from .feature_cache import FeatureCache

log = logging.getLogger(__name__)


@dataclass
class HeadFitResult:
    """Outcome of :func:`fit_head`: best epoch, its validation NLL and the per-epoch history."""

    best_epoch: int
    best_valid_nll: float
    history: list[dict] = field(default_factory=list)


def initial_psi0(cache: FeatureCache) -> float:
    """Data-derived psi0: the mean squared backbone force residual per component, (eV/A)^2."""
    total, count = 0.0, 0
    for c in cache:
        r = (c.forces_ref - c.forces).double()
        total += float((r * r).sum())
        count += r.numel()
    return max(total / max(count, 1), 1e-8)


def _mean_nll(head: nn.Module, cache: FeatureCache) -> float:
    total, n = 0.0, 0
    with torch.no_grad():
        for c in cache:
            params = head(*c.head_inputs())
            total += float(predictive_distribution(params).nll(c.forces_ref).sum())
            n += c.num_atoms
    return total / max(n, 1)


def evaluate_head(head: nn.Module, cache: FeatureCache) -> dict:
    """Force MAE, Spearman and ROC-AUC of sigma_i vs error, predictive NLL and CE on ``cache``."""
    c = cache.concatenated()
    with torch.no_grad():
        params = head(*c.head_inputs())
        sigma = head.uncertainty(params).sigma
        err = force_error(c.forces, c.forces_ref)
        dist = predictive_distribution(params)
        nll = float(dist.nll(c.forces_ref).mean())
        ce = calibration(dist.credible_level(c.forces_ref))["ce"]
    return {
        "ce": ce,
        "force_mae": float((c.forces - c.forces_ref).abs().mean()),
        "spearman": spearman(sigma, err),
        "roc_auc": roc_auc(sigma, err),
        "nll": nll,
    }


def fit_head(
    head: nn.Module,
    train: FeatureCache,
    valid: FeatureCache | None = None,
    max_epochs: int = 200,
    lr: float = 5e-3,
    patience: int = 50,
    seed: int = 0,
    progress: bool | None = None,
) -> HeadFitResult:
    """Adam on the head's per-atom force loss, one step per cached chunk.

    The best head (lowest validation NLL; training NLL without ``valid``) is loaded back into
    ``head`` at the end. Stops after ``patience`` epochs without improvement.
    """
    if max_epochs < 1 or patience < 1:
        raise ValueError(f"invalid max_epochs={max_epochs!r} / patience={patience!r}: >= 1")
    if progress is None:
        progress = sys.stderr.isatty()
    torch.manual_seed(seed)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    monitor = valid if valid is not None else train
    best = (math.inf, 0, copy.deepcopy(head.state_dict()))
    result = HeadFitResult(0, math.inf)
    bar = tqdm(range(1, max_epochs + 1), disable=not progress, desc="head", leave=False)
    for epoch in bar:
        head.train()
        train_loss, n = 0.0, 0
        for c in train:
            opt.zero_grad()
            loss = head.force_loss(head(*c.head_inputs()), c.forces_ref).mean()
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite head loss at epoch {epoch}")
            loss.backward()
            opt.step()
            train_loss += loss.item() * c.num_atoms
            n += c.num_atoms
        head.eval()
        nll = _mean_nll(head, monitor)
        result.history.append({"epoch": epoch, "train_loss": train_loss / n, "valid_nll": nll})
        bar.set_postfix(valid_nll=f"{nll:.3f}")
        if nll < best[0]:
            best = (nll, epoch, copy.deepcopy(head.state_dict()))
        elif epoch - best[1] >= patience:
            log.info("early stop at epoch %d (best %d)", epoch, best[1])
            break
    head.load_state_dict(best[2])
    result.best_valid_nll, result.best_epoch = best[0], best[1]
    return result


def train_attached_head(
    head: nn.Module,
    train: FeatureCache,
    valid: FeatureCache | None = None,
    calibration: CalibrationSettings | None = None,
    **fit_options,
) -> dict:
    """Initialise psi0 from the backbone's residuals, fit ``head``, fit its feature statistics
    and recalibration scale (``calibration``; ``None`` fits neither) and report before/after.

    ``fit_options``: the keyword arguments of :func:`fit_head` (``max_epochs``, ``lr``, ...).

    Returns a dict with ``best_epoch``, ``epochs_run``, ``evaluated_on`` (``"valid"`` or
    ``"train"``), ``before`` (backbone force MAE, eV/A), ``after`` (:func:`evaluate_head` of the
    final head) and ``calibration`` (:func:`~eip_plugins.calibration.calibrate_head`'s report).
    Closes both caches.
    """
    covariance = getattr(head, "covariance", None)
    if covariance is not None:
        covariance.set_psi0(initial_psi0(train))
    try:
        fit = fit_head(head, train, valid, **fit_options)
        head.eval()
        calibrated = calibrate_head(head, train, valid, calibration) if calibration else None
        report_cache = valid if valid is not None else train
        after = evaluate_head(head, report_cache)
        everything = report_cache.concatenated()
        before_mae = float((everything.forces - everything.forces_ref).abs().mean())
    finally:
        train.close()
        if valid is not None:
            valid.close()
    return {
        "best_epoch": fit.best_epoch,
        "epochs_run": len(fit.history),
        "evaluated_on": "valid" if valid is not None else "train",
        "before": {"force_mae": before_mae},
        "after": after,
        "calibration": calibrated,
    }
