"""Fit a trained head's feature statistics (density-aware evidence) and its recalibration scale.

Framework-neutral: the adapters turn their data into :class:`~eip_plugins.attach.FeatureChunk`
iterables (node features, backbone forces, reference forces and species of whole structures) and
call :func:`calibrate_head`:

1. one pass without gradients over the *training* chunks accumulates per-species mean and
   covariance of the head's invariant descriptors (:class:`~eip_plugins.core.FeatureStatistics`)
   and stores them in ``head.density``, the per-species range of the head's learned outputs
   (:class:`~eip_plugins.core.output_range.OutputRangeStatistics`), stored in
   ``head.output_range``, and the per-species mean squared reference force;
2. one pass over the *validation* chunks gives the head's parameters with the new statistics and
   c = 1; the scale c that minimises their NLL (or CE) is stored in ``head.variance_scale``;
3. the force prior (``head.density.prior_variance``), which bounds the recalibrated epistemic
   variance in absolute units, is stored last.

Both are buffers of the model: every save / compile / package path carries them.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..core.feature_density import (
    DEFAULT_FORCE_PRIOR,
    DEFAULT_POWER,
    DEFAULT_SHRINKAGE,
    DEFAULT_STRENGTH,
    FeatureStatistics,
)
from ..core.metrics import calibration, force_error, roc_auc, spearman
from ..core.neighbour_distance import NeighbourSample, fit_neighbours
from ..core.output_range import OutputRangeStatistics
from ..core.predictive import predictive_distribution
from ..core.recalibration import OBJECTIVES, fit_variance_scale

log = logging.getLogger(__name__)

RECALIBRATION_CHOICES = (*OBJECTIVES, "none")
#: training atoms kept per element for the neighbour distance unless told otherwise (with the
#: feature statistics on): every atom of a training set of up to this many per element, a uniform
#: random sample of a larger one
DEFAULT_NEIGHBOURS = 4096


@dataclass
class CalibrationSettings:
    """What :func:`calibrate_head` fits.

    Attributes:
        density: fit the per-element feature statistics (density-aware evidence and the
            ``forces_feature_distance`` output); ``False`` leaves them empty (r = 0).
        strength, power: a >= 0 and p >= 1 of the evidence factor 1 / (1 + a r^(2p)); a = 0 keeps
            the evidence as trained but still reports the distance.
        recalibrate: ``"nll"`` (default), ``"ce"`` or ``"none"`` (c = 1).
        shrinkage: minimum shrinkage of the covariances toward their diagonal, in [0, 1].
        output_range: fit the range of the head's learned outputs over the training atoms and
            clamp them to it (bounded extrapolation); ``False`` lets them extrapolate.
        neighbours: keep up to this many training atoms per element (a uniform random sample)
            and add their soft nearest-neighbour distance to the Gaussian one
            (:mod:`eip_plugins.core.neighbour_distance`); 0: the Gaussian distance only;
            ``None`` (default): :data:`DEFAULT_NEIGHBOURS` with the feature statistics, 0
            without them.
        force_prior: k >= 0: fit the mean squared reference force component of each element's
            training atoms, so that sigma_epistemic levels off at k times its square root
            (:mod:`eip_plugins.core.feature_density`); 0: unbounded growth.
    """

    density: bool = True
    strength: float = DEFAULT_STRENGTH
    power: float = DEFAULT_POWER
    recalibrate: str = "nll"
    shrinkage: float = DEFAULT_SHRINKAGE
    output_range: bool = True
    neighbours: int | None = None
    force_prior: float = DEFAULT_FORCE_PRIOR

    def __post_init__(self) -> None:
        if self.neighbours is None:
            self.neighbours = DEFAULT_NEIGHBOURS if self.density else 0
        if self.recalibrate not in RECALIBRATION_CHOICES:
            raise ValueError(
                f"invalid recalibrate={self.recalibrate!r}: one of {RECALIBRATION_CHOICES}"
            )
        if not 0.0 <= self.shrinkage <= 1.0:
            raise ValueError(f"invalid shrinkage={self.shrinkage!r}: must lie in [0, 1]")
        if not self.strength >= 0.0:
            raise ValueError(f"invalid density strength={self.strength!r}: must be >= 0")
        if not self.power >= 1.0:
            raise ValueError(f"invalid density power={self.power!r}: must be >= 1")
        if self.neighbours != 0 and not self.neighbours >= 2:
            raise ValueError(
                f"invalid density neighbours={self.neighbours!r}: 0 (off) or the training atoms "
                "kept per element, >= 2"
            )
        if not (math.isfinite(self.force_prior) and self.force_prior >= 0.0):
            raise ValueError(
                f"invalid force prior={self.force_prior!r}: a multiple of the RMS training force "
                ">= 0 (0: off)"
            )
        if self.neighbours and not self.density:
            raise ValueError("density neighbours need the feature statistics (density on)")


def _species(chunk) -> torch.Tensor:
    if chunk.species is not None:
        return chunk.species
    return torch.zeros(chunk.node_feats.shape[0], dtype=torch.long)


class _OutputRangeRecorder:
    """Counts the atoms entering ``head.output_range`` and those it clamps while registered, and
    keeps what enters it (``values, species``) with ``keep_inputs``."""

    def __init__(self, head: nn.Module, keep_inputs: bool = False):
        self.inputs: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        self.keep_inputs = keep_inputs
        self.clamped_atoms = 0
        self.atoms = 0
        self._handle = head.output_range.register_forward_hook(self._record)

    def _record(self, module, args, output) -> None:
        values = args[0].detach()
        if self.keep_inputs:
            species = args[1].detach() if len(args) > 1 and args[1] is not None else None
            self.inputs.append((values, species))
        self.clamped_atoms += int((values != output.detach()).any(-1).sum())
        self.atoms += values.shape[0]

    @property
    def clamped_fraction(self) -> float:
        return self.clamped_atoms / max(self.atoms, 1)

    def remove(self) -> None:
        self._handle.remove()


@torch.no_grad()
def fit_training_statistics(
    head: nn.Module,
    chunks: Iterable,
    shrinkage: float,
    density: bool,
    output_range: bool,
    neighbours: int = 0,
    force_prior: bool = False,
) -> dict:
    """One pass over the training ``chunks``: the per-species statistics of ``head``'s
    descriptors (``density``), with ``neighbours`` > 0 a sample of up to that many descriptors
    per species for the neighbour distance, the per-species range of its learned outputs
    (``output_range``), stored in the head, and with ``force_prior`` the per-species mean
    squared reference force component, returned (not stored: :func:`calibrate_head` stores the
    force prior after the recalibration scale).

    Returns ``{"atoms_per_species": [...], "dim": D, "seconds": ...}`` (the statistics) and/or
    ``{"output_range": {"atoms": N, "seconds": ...}}`` and/or ``{"mean_square_force":
    (Z,) tensor, (eV/A)^2}``.
    """
    t0 = time.perf_counter()
    stats = FeatureStatistics(head.density.num_species, head.density.dim) if density else None
    sample = None
    if density and neighbours:
        sample = NeighbourSample(head.density.num_species, head.density.dim, neighbours)
    ranges = recorder = None
    if output_range:
        ranges = OutputRangeStatistics(head.output_range.num_species, len(head.output_range.names))
        recorder = _OutputRangeRecorder(head, keep_inputs=True)
    num_species = head.density.num_species
    square_sum = torch.zeros(num_species, dtype=torch.float64)
    square_count = torch.zeros(num_species, dtype=torch.float64)
    try:
        for chunk in chunks:
            if force_prior:
                species = _species(chunk).reshape(-1).long().cpu()
                square = chunk.forces_ref.detach().cpu().double().square().mean(-1)  # (N,)
                if not bool(torch.isfinite(square).all()):
                    raise ValueError("non-finite reference forces in the training data")
                square_sum.index_add_(0, species, square)
                square_count.index_add_(0, species, torch.ones_like(square))
            if stats is not None:
                descriptors, species = head.invariants(chunk.node_feats), _species(chunk)
                stats.update(descriptors, species)
                if sample is not None:
                    sample.update(descriptors, species)
            if recorder is not None:
                head.forward_with_distance(*chunk.head_inputs())
                for values, species in recorder.inputs:
                    ranges.update(values, species)
                recorder.inputs.clear()
    finally:
        if recorder is not None:
            recorder.remove()
    report: dict = {}
    if stats is not None:
        fitted = stats.finalize(shrinkage=shrinkage)
        head.density.load_statistics(fitted)
        report.update(atoms_per_species=stats.count.long().tolist(), dim=head.density.dim)
        if sample is not None:
            bank = fit_neighbours(sample, fitted.mean, fitted.whitening)
            head.density.load_neighbours(bank)
            report["neighbours_per_species"] = bank.count.long().tolist()
    if ranges is not None:
        head.output_range.load_range(*ranges.finalize())
        report["output_range"] = {"atoms": int(ranges.count.sum())}
    if force_prior:
        report["mean_square_force"] = square_sum / square_count.clamp_min(1.0)
    report["seconds"] = round(time.perf_counter() - t0, 2)
    return report


@torch.no_grad()
def head_predictions(head: nn.Module, chunks: Iterable):
    """The head's parameters (float64), reference forces, backbone forces and feature distance
    over every atom of ``chunks``."""
    params, ref, forces, dist = [], [], [], []
    for chunk in chunks:
        p, d2 = head.forward_with_distance(*chunk.head_inputs())
        params.append(p)
        ref.append(chunk.forces_ref.double())
        forces.append(chunk.forces.double())
        dist.append(d2.double())
    if not params:
        raise ValueError("no validation structures to recalibrate on")
    kind = type(params[0])
    stacked = kind(*(torch.cat([getattr(p, f) for p in params]).double() for f in kind._fields))
    return stacked, torch.cat(ref), torch.cat(forces), torch.cat(dist)


def _quality(head, params, forces_ref, forces) -> dict:
    dist = predictive_distribution(params)
    sigma = head.uncertainty(params).sigma
    error = force_error(forces, forces_ref)
    return {
        "nll": float(dist.nll(forces_ref).mean()),
        "ce": calibration(dist.credible_level(forces_ref))["ce"],
        "spearman": spearman(sigma, error),
        "roc_auc": roc_auc(sigma, error),
        "mean_sigma": float(sigma.mean()),
    }


def calibrate_head(
    head: nn.Module,
    train_chunks: Iterable,
    valid_chunks: Iterable | None,
    settings: CalibrationSettings | None = None,
) -> dict:
    """Fit ``head.density`` on ``train_chunks`` and ``head.variance_scale`` on ``valid_chunks``.

    Without validation chunks (or with ``recalibrate="none"``) c is 1. Returns a report with the
    settings, the statistics, c, the validation metrics before (the head as trained: no
    statistics, c = 1) and after, and the time taken (s).
    """
    settings = settings or CalibrationSettings()
    t0 = time.perf_counter()
    was_training = head.training
    head.eval()
    head.density.reset()
    head.density.set_evidence_form(settings.strength, settings.power)
    head.output_range.reset()
    head.variance_scale.set(1.0)
    report: dict = {"settings": asdict(settings)}
    mean_square_force = None
    valid_chunks = list(valid_chunks) if valid_chunks is not None else None
    if valid_chunks:
        params, ref, forces, _ = head_predictions(head, valid_chunks)
        report["before"] = _quality(head, params, ref, forces)
    if settings.density or settings.output_range or settings.force_prior:
        fitted = fit_training_statistics(
            head,
            train_chunks,
            settings.shrinkage,
            settings.density,
            settings.output_range,
            settings.neighbours,
            settings.force_prior > 0.0,
        )
        if "output_range" in fitted:
            report["output_range"] = fitted.pop("output_range")
        mean_square_force = fitted.pop("mean_square_force", None)
        if settings.density:
            report["statistics"] = fitted
    scale = 1.0
    if valid_chunks:
        # clamping acts before the scale c: this pass alone counts the bounded atoms
        recorder = _OutputRangeRecorder(head) if settings.output_range else None
        try:
            params, ref, forces, dist_sq = head_predictions(head, valid_chunks)
        finally:
            if recorder is not None:
                recorder.remove()
        if settings.recalibrate != "none":
            scale = fit_variance_scale(params, ref, settings.recalibrate)
            head.variance_scale.set(scale)
        if settings.recalibrate != "none" or mean_square_force is not None:
            _load_force_prior(head, mean_square_force, settings.force_prior, report)
            params, ref, forces, dist_sq = head_predictions(head, valid_chunks)
        report["after"] = _quality(head, params, ref, forces)
        report["after"]["mean_feature_distance"] = float(torch.sqrt(dist_sq).mean())
        if recorder is not None:
            report["after"]["bounded_fraction"] = recorder.clamped_fraction
    else:
        _load_force_prior(head, mean_square_force, settings.force_prior, report)
    report["variance_scale"] = scale
    report["seconds"] = time.perf_counter() - t0
    head.train(was_training)
    log.info(
        "uncertainty calibration: statistics %s, output range %s, force prior %s, c = %.4g%s "
        "(%.1f s)",
        report.get("statistics", "off"),
        report.get("output_range", "off"),
        report.get("force_prior", "off"),
        scale,
        _before_after(report),
        report["seconds"],
    )
    return report


def _load_force_prior(head: nn.Module, mean_square_force, multiple: float, report: dict) -> None:
    """Store the force prior V_z = k^2 <F_c^2>_z (after c: it bounds the recalibrated variance)
    and report V_z ((eV/A)^2); nothing without ``mean_square_force``."""
    if mean_square_force is None:
        return
    head.density.load_force_prior(mean_square_force, multiple)
    report["force_prior"] = [round(float(v), 6) for v in head.density.prior_variance]


def calibrate_or_keep(head: nn.Module, train_chunks, valid_chunks, settings) -> dict | None:
    """:func:`calibrate_head` at the end of a training run: if it fails (e.g. non-finite
    features), the head is restored as it was, one warning names the reason, and ``None`` is
    returned, so that the run still writes its model."""
    saved = {k: v.detach().clone() for k, v in head.state_dict().items()}
    try:
        return calibrate_head(head, train_chunks, valid_chunks, settings)
    except (ValueError, RuntimeError, FloatingPointError) as err:
        head.load_state_dict(saved)
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        log.warning(
            "uncertainty calibration failed (%s); the head is kept as trained: run "
            "`eip-calibrate` on the saved model once the cause is fixed",
            first,
        )
        return None


def _before_after(report: dict) -> str:
    if "before" not in report:
        return ""
    b, a = report["before"], report["after"]
    return (
        f"; validation CE {b['ce']:.3f} -> {a['ce']:.3f}, NLL {b['nll']:.3f} -> {a['nll']:.3f}, "
        f"Spearman {b['spearman']:.3f} -> {a['spearman']:.3f}"
    )
