"""The distance of an atom to its nearest training atoms in descriptor space (SPEC §1c,
density-aware evidence, local form).

The Gaussian distance of :mod:`.feature_density` measures how far an atom's descriptors h lie
from the centre of its element's training atoms, in units of their spread. It cannot see that
an element's training atoms form several clusters (a carbon in CH3, in CH2OH, in COOH): an atom
between two clusters, where no training atom lies, counts as typical. The neighbour distance
measures how far h lies from the nearest training atoms of its element instead, in the same
whitened coordinates w = W_z (h - m_z), each stored atom's distance in units of its own local
spacing:

    s_i^2 = -tau_z log sum_j exp(-|w_i - b_j|^2 / (tau_z rho_j)),  j over the stored atoms b_j of z,

a soft minimum of the scaled squared distances (the nearest one as tau -> 0, smooth everywhere so
that sigma's gradient, UDD's bias force, is continuous), clamped at 0 and divided by its mean
over the stored training atoms with each atom left out of its own sum (so that 1 is a typical
training atom, as for the Gaussian distance). tau_z is ``temperature_factor`` times the mean
scaled squared distance of a stored atom to its nearest other stored atom.

rho_j is the local scale of stored atom j: l_j = the mean squared distance of b_j to its k
nearest other stored atoms (``local_neighbours`` k = 5), rho_j = (l_j / <l>_z)^alpha, mean-1
normalised within the element, alpha = ``local_scale_power`` (1/2). An element's training atoms
are not spread evenly: the gas-phase molecules' atoms of a few MD trajectories sit in tight
clusters, the condensed-phase water's atoms of the same element are spread thinly. With one
scale per element (alpha = 0) an atom in a thinly but fully covered region reads as new, as far
as the unseen molecules' atoms (the benchmark's water box: sigma too large, CE 0.07 -> 0.16).
Measuring each distance in units of the stored atom's own spacing, as the local outlier factor
does (Breunig et al., SIGMOD 2000), counts a covered region as covered; alpha = 1 would also let
an isolated training atom cover a wide region, alpha = 1/2 is halfway (measured for alpha = 0,
1/4, 1/2, 3/4, 1: README.md, "σ that grows out of distribution", and examples/benchmark/
README.md, "Other backbones").

- :class:`NeighbourSample` keeps up to M training descriptors per element while the training
  set streams past (reservoir sampling, seeded: every atom has the same chance to be kept);
- :func:`fit_neighbours` whitens them with the fitted Gaussian statistics and computes rho_j,
  tau_z and the normalisation;
- :func:`neighbour_distance_sq` is the forward (TorchScript- and AOTInductor-compatible), one
  (N, B_z) matrix product per element.

Cost per call: N B (D + 2) multiply-adds for N atoms, B stored atoms and D descriptors (e.g. 648
atoms, 2080 stored atoms, D = 32: 46 M), and N B exponentials.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import List, Optional

import torch
from torch import Tensor

#: tau_z as a fraction of the stored atoms' mean scaled squared nearest-neighbour distance
DEFAULT_TEMPERATURE_FACTOR = 0.1
#: k, the stored atoms each stored atom's local spacing l_j is measured over
DEFAULT_LOCAL_NEIGHBOURS = 5
#: alpha of the local scale rho_j = (l_j / <l>_z)^alpha (0: one scale per element)
DEFAULT_LOCAL_SCALE_POWER = 0.5
#: rows of the (M, M) distance matrix of the kept atoms computed at once while fitting
_FIT_BLOCK_ROWS = 1024


@dataclass
class FittedNeighbours:
    """The stored atoms of every element, whitened (float64).

    Shapes: bank (B, D) whitened descriptors of all elements' stored atoms; species (B,) int64
    their element; local_scale (B,) rho_j, dimensionless (mean 1 per element before the power
    alpha); temperature (Z,) tau_z and scale (Z,) the normalisation of s^2 (both 0 for an
    element without stored atoms, which then keeps the Gaussian distance); count (Z,) the
    stored atoms per element.
    """

    bank: Tensor
    species: Tensor
    temperature: Tensor
    scale: Tensor
    count: Tensor
    local_scale: Tensor


class NeighbourSample:
    """Up to ``max_per_species`` descriptors of each element, a uniform random sample of those
    streamed through :meth:`update` (Vitter's reservoir sampling, float64, CPU).

    Args:
        num_species: Z.
        dim: D.
        max_per_species: M >= 2.
        seed: of the sampling (the same stream and seed keep the same atoms).
    """

    def __init__(self, num_species: int, dim: int, max_per_species: int, seed: int = 0):
        if int(max_per_species) < 2:
            raise ValueError(
                f"invalid neighbours={max_per_species!r}: keep at least 2 training atoms per "
                "element (0 switches the neighbour distance off)"
            )
        self.num_species, self.dim = int(num_species), int(dim)
        self.max_per_species = int(max_per_species)
        self.seen = [0] * self.num_species
        self.kept: List[Tensor] = [torch.zeros(0, self.dim, dtype=torch.float64)] * num_species
        self.generator = torch.Generator().manual_seed(int(seed))

    @torch.no_grad()
    def update(self, features: Tensor, species: Tensor) -> None:
        """Add a batch: features (N, D), species (N,) int64 in [0, Z)."""
        x = features.detach().cpu().double()
        species = species.reshape(-1).long().cpu()
        for z in species.unique().tolist():
            rows = x[species == z]
            kept, seen, m = self.kept[z], self.seen[z], self.max_per_species
            room = max(m - kept.shape[0], 0)
            if room:
                kept = torch.cat([kept, rows[:room]])
                seen, rows = seen + min(room, rows.shape[0]), rows[room:]
            if rows.shape[0]:  # atom number t (1-based) replaces a kept one with chance m / t
                t = torch.arange(seen + 1, seen + rows.shape[0] + 1, dtype=torch.float64)
                u = torch.rand(rows.shape[0], generator=self.generator, dtype=torch.float64)
                slot = torch.floor(u * t).long()
                for row, s in zip(rows[slot < m], slot[slot < m].tolist(), strict=True):
                    kept[s] = row
                seen += rows.shape[0]
            self.kept[z], self.seen[z] = kept, seen


@torch.no_grad()
def fit_neighbours(
    sample: NeighbourSample,
    mean: Tensor,
    whitening: Tensor,
    temperature_factor: float = DEFAULT_TEMPERATURE_FACTOR,
    local_scale_power: float = DEFAULT_LOCAL_SCALE_POWER,
    local_neighbours: int = DEFAULT_LOCAL_NEIGHBOURS,
) -> FittedNeighbours:
    """Whiten the kept descriptors with the Gaussian statistics (mean (Z, D), whitening
    (Z, D, D)) and fit rho_j, tau_z and the normalisation of every element with >= 2 kept atoms
    (k is capped at the kept atoms - 1)."""
    if not temperature_factor > 0.0:
        raise ValueError(f"invalid temperature_factor={temperature_factor!r}: must be > 0")
    if not 0.0 <= local_scale_power <= 1.0:
        raise ValueError(f"invalid local_scale_power={local_scale_power!r}: must lie in [0, 1]")
    if int(local_neighbours) < 1:
        raise ValueError(f"invalid local_neighbours={local_neighbours!r}: must be >= 1")
    z_count = sample.num_species
    banks, species, local_scales = [], [], []
    temperature = torch.zeros(z_count, dtype=torch.float64)
    scale = torch.zeros(z_count, dtype=torch.float64)
    count = torch.zeros(z_count, dtype=torch.float64)
    for z in range(z_count):
        kept = sample.kept[z]
        if kept.shape[0] < 2:
            continue
        w = (kept - mean[z].double()) @ whitening[z].double().T  # (M, D)
        k = min(int(local_neighbours), w.shape[0] - 1)
        spacing = torch.cat(
            [b.topk(k, dim=1, largest=False).values.mean(1) for b in _leave_one_out_sq(w)]
        )
        if not spacing.mean() > 0.0:
            continue  # every kept atom identical: no scale to measure distances by
        # the power of a ratio with a zero (k coincident atoms) would be 0: floor it
        ratio = (spacing / spacing.mean()).clamp_min(1e-6)
        rho = ratio.pow(float(local_scale_power))
        nearest = torch.cat([b.min(dim=1).values for b in _leave_one_out_sq(w, rho)])
        tau = temperature_factor * nearest.mean()
        if not tau > 0.0:
            continue
        s2 = torch.cat(
            [(-tau * torch.logsumexp(-b / tau, dim=1)) for b in _leave_one_out_sq(w, rho)]
        ).clamp_min(0.0)
        norm = s2.mean()
        if not norm > 0.0:
            continue
        banks.append(w)
        species.append(torch.full((w.shape[0],), z, dtype=torch.long))
        local_scales.append(rho)
        temperature[z], scale[z], count[z] = tau, norm, float(w.shape[0])
    dim = mean.shape[-1]
    return FittedNeighbours(
        torch.cat(banks) if banks else torch.zeros(0, dim, dtype=torch.float64),
        torch.cat(species) if species else torch.zeros(0, dtype=torch.long),
        temperature,
        scale,
        count,
        torch.cat(local_scales) if local_scales else torch.zeros(0, dtype=torch.float64),
    )


def _leave_one_out_sq(w: Tensor, local_scale: Optional[Tensor] = None) -> Iterator[Tensor]:
    """Squared distances among the rows of w (M, D), column j divided by ``local_scale`` (M,)
    rho_j when given, the diagonal at +inf (each atom left out of its own sum), in blocks of at
    most ``_FIT_BLOCK_ROWS`` rows: (rows, M) each, so that the fit never holds the whole (M, M)
    matrix."""
    for start in range(0, w.shape[0], _FIT_BLOCK_ROWS):
        block = torch.cdist(w[start : start + _FIT_BLOCK_ROWS], w).square()
        if local_scale is not None:
            block = block / local_scale
        rows = torch.arange(block.shape[0])
        block[rows, rows + start] = float("inf")
        yield block


def element_offsets(bank_species: Tensor, num_species: int) -> List[int]:
    """Where each element's stored atoms start in a bank sorted by element: Z + 1 ints, the
    atoms of element z are rows ``offsets[z]:offsets[z + 1]``.

    Raises:
        ValueError: if ``bank_species`` (B,) is not sorted (every bank :func:`fit_neighbours`
            makes is).
    """
    species = bank_species.detach().cpu().long()
    if species.numel() > 1 and bool((species[1:] < species[:-1]).any()):
        raise ValueError("the neighbour bank is not sorted by element")
    counts = torch.bincount(species, minlength=int(num_species))[: int(num_species)]
    return [0] + torch.cumsum(counts, 0).tolist()


def neighbour_distance_sq(
    whitened: Tensor,
    species: Tensor,
    bank: Tensor,
    offsets: List[int],
    temperature: Tensor,
    scale: Tensor,
    fallback: Tensor,
    local_scale: Tensor,
) -> Tensor:
    """s_i^2 / <s^2>_z (N,) of whitened descriptors (N, D) of atoms of ``species`` (N,) against
    the stored atoms ``bank`` (B, D), sorted by element, those of element z in rows
    ``offsets[z]:offsets[z + 1]`` (:func:`element_offsets`), with local scales ``local_scale``
    (B,) rho_j; ``temperature`` and ``scale`` (Z,) as in :class:`FittedNeighbours`. Atoms of an
    element without stored atoms get ``fallback`` (N,) (the Gaussian distance).

    One (N, B_z) product and one log-sum-exp per element: with tau_i the temperature of atom
    i's element,

        -|w_i - b_j|^2 / (tau_i rho_j)
            = [w_i / tau_i, -|w_i|^2 / tau_i, -1 / tau_i] . [2 b_j, 1, |b_j|^2] / rho_j,

    a product of (N, D + 2) and (B_z, D + 2) matrices. Every atom is computed against every
    element's block (no data-dependent shapes: the same code compiles with AOTInductor) and
    keeps its own element's: N B (D + 2) multiply-adds in all, in blocks of a few MB instead of
    one (N, B) matrix per pass.
    """
    tau = temperature[species]
    has_bank = tau > 0.0
    tau = torch.where(has_bank, tau, torch.ones_like(tau))
    inverse_tau = (1.0 / tau).unsqueeze(1)  # (N, 1)
    norm_sq = (whitened * whitened).sum(-1, keepdim=True)  # (N, 1)
    rows = torch.cat([whitened * inverse_tau, -norm_sq * inverse_tau, -inverse_tau], dim=1)
    columns = torch.cat(
        [2.0 * bank, torch.ones_like(bank[:, :1]), (bank * bank).sum(-1, keepdim=True)], dim=1
    ) / local_scale.unsqueeze(1)  # (B, D + 2)
    log_sum = torch.zeros_like(tau)
    for z in range(len(offsets) - 1):
        start, end = offsets[z], offsets[z + 1]
        if end > start:
            # (N, B_z): -|w_i - b_j|^2 / (tau_i rho_j); rows of other elements are discarded
            exponent = torch.mm(rows, columns[start:end].transpose(0, 1))
            log_sum = torch.where(species == z, _log_sum_exp(exponent), log_sum)
    # s^2 = -tau log sum_j exp(-|w - b_j|^2 / (tau rho_j))
    soft_min = (-tau * log_sum).clamp_min(0.0)
    norm = torch.where(has_bank, scale[species], torch.ones_like(tau))
    return torch.where(has_bank, soft_min / norm, fallback)


def _log_sum_exp(x: Tensor) -> Tensor:
    """log sum_j exp(x_ij) (N,) of x (N, B), each term below e^-80 of the row's largest counted as
    e^-80 (changes the sum by less than B e^-80 relative: nothing in float32 or float64).

    ``torch.logsumexp`` is exact but slow here: most terms underflow (the far stored atoms, and
    every stored atom for the rows of other elements), and exp takes a scalar path for arguments
    whose result is a denormal or zero (4x slower in float64, up to 30x in float32, measured on
    the 2-core VM). The shift is detached: the log-sum-exp is exact for any shift, and so is its
    gradient.
    """
    shift = x.detach().amax(dim=1, keepdim=True)
    return shift.squeeze(1) + torch.log(torch.exp((x - shift).clamp_min(-80.0)).sum(1))
