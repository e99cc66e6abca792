"""Per-element feature statistics and the distance of an atom to the training atoms (SPEC §1c,
density-aware evidence).

- :class:`FeatureStatistics` accumulates, per element (species index z), the count, mean and
  covariance of invariant descriptors h (N, D) in float64, streaming over batches (Chan et al.'s
  pairwise update: no large sums that cancel), and turns them into a well-conditioned, normalised
  whitening matrix.
- :class:`FeatureDensity` holds the fitted statistics as buffers of the model (they survive
  ``state_dict``, pickling, TorchScript and ``torch.export``) and computes the normalised squared
  Mahalanobis distance

      r_i^2 = (h_i - m_z)^T C_z^-1 (h_i - m_z) / <d^2>_z,

  where <d^2>_z is the mean of the same distance over the training atoms of element z (so r = 1 is
  a typical training atom, whatever the descriptor dimension D), and the evidence factor

      g_i = 1 / (1 + a r_i^(2p)).

  The epistemic evidence is multiplied by g, so the epistemic variance grows as (1 + a r^(2p)).
  p = 1 is SPEC §1c's form (variance linear in d^2); the default p = 2 (epistemic standard
  deviation quadratic in the distance, as the error of a model that matches the data and its
  first derivatives grows when it extrapolates) is what the benchmark measured to follow the
  error out of distribution (examples/benchmark/README.md).

With a neighbour bank (:mod:`.neighbour_distance`, fitted with ``neighbours > 0``) the
distance is the mean of the two normalised squared distances,

      r_i^2 = (1 - w) r_Gauss,i^2 + w s_i^2,    w = ``neighbour_weight`` = 1/2,

where s_i is the (soft) distance to the nearest stored training atoms of the element, each in
units of that stored atom's local spacing: the Gaussian term keeps the growth along directions
the training atoms never varied in, the neighbour term sees gaps between an element's clusters
of environments without reading a thinly covered cluster as new.

The force prior (``prior_variance`` (Z,), fitted with :meth:`load_force_prior`) bounds the
epistemic variance where the distance would grow it without end: sigma_epistemic of an atom far
from every training atom says "far outside the training data", but as an error estimate it was
meaningless (the benchmark's NequIP models put sigma at up to 180 eV/A on atoms of unseen
molecules whose errors were at most 3.4 eV/A). The heads add the evidence of a prior of
variance V_z per Cartesian component, kappa_prior = v / V_z for an atom whose epistemic variance
per unit evidence is v (:meth:`prior_evidence`), in quadrature: kappa = hypot(kappa_density,
kappa_prior), so that

    1 / Var_epistemic^2 = 1 / Var_epistemic,raw^2 + 1 / V_z^2,    V_z = k^2 <F_c^2>_z,

with <F_c^2>_z the mean squared reference force component of the training atoms of element z
((eV/A)^2) and k = ``force_prior`` (:data:`DEFAULT_FORCE_PRIOR` = 8): far out of distribution
sigma_epistemic levels off at k times the element's RMS training force. V_z is absolute: it
acts on the recalibrated variance (c times the head's), and c is fitted before it (the
validation atoms' variances lie far below V_z); where Var_raw << V_z (every training atom) the
variance is unchanged to second order. The quadrature (rather than adding the evidences, a
harmonic mean of the variances) keeps the variance within 1 % of its raw value up to
Var_raw = V_z / 7; a smaller k, or the harmonic form, made the credible regions of the
benchmark's unseen molecules too narrow (examples/benchmark/README.md, "The force prior").

Without fitted statistics every buffer is zero, r^2 = 0 and g is exactly 1, and without a fitted
prior the prior evidence is exactly 0: a model whose statistics were never fitted behaves exactly
as one without this module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .neighbour_distance import FittedNeighbours, element_offsets, neighbour_distance_sq

DEFAULT_SHRINKAGE = 0.1
DEFAULT_JITTER = 1e-6
DEFAULT_STRENGTH = 1.0
DEFAULT_POWER = 2.0
#: the weight of the neighbour distance in r^2 when a neighbour bank is fitted
NEIGHBOUR_WEIGHT = 0.5
#: the buffers with one row per stored atom (B), kept in the same order: the order the training
#: atoms were read in, so two fits of the same data may differ in it
BANK_ROWS = ("bank", "bank_species", "bank_local_scale")
#: r^2 beyond this counts as this (r = 10^6)
MAX_DISTANCE_SQ = 1.0e12
#: the epistemic variance grows by this factor at most (sigma_epistemic by 10^6)
MAX_EVIDENCE_DIVISOR = 1.0e12
#: k: sigma_epistemic levels off at k times the element's RMS training force component
DEFAULT_FORCE_PRIOR = 8.0


@dataclass
class FittedStatistics:
    """Finalised per-species statistics (float64).

    Shapes: mean (Z, D); covariance (Z, D, D) after shrinkage; whitening (Z, D, D) =
    L^-1 / sqrt(<d^2>) with covariance = L L^T and <d^2> the mean squared Mahalanobis distance of
    the species' training atoms, so that r^2 = |whitening (h - mean)|^2 has mean 1 over them;
    count (Z,) training atoms per species (species without atoms use the statistics of all atoms
    pooled).
    """

    mean: Tensor
    covariance: Tensor
    whitening: Tensor
    count: Tensor


class FeatureStatistics:
    """Streaming per-species mean and covariance of descriptors h (N, D), float64.

    Args:
        num_species: Z; species indices are 0..Z-1.
        dim: D.
    """

    def __init__(self, num_species: int, dim: int):
        if num_species < 1 or dim < 1:
            raise ValueError(f"invalid num_species={num_species!r} / dim={dim!r}: must be >= 1")
        self.num_species, self.dim = int(num_species), int(dim)
        self.count = torch.zeros(num_species, dtype=torch.float64)
        self.mean = torch.zeros(num_species, dim, dtype=torch.float64)
        self.scatter = torch.zeros(num_species, dim, dim, dtype=torch.float64)  # sum (h-m)(h-m)^T

    @torch.no_grad()
    def update(self, features: Tensor, species: Tensor) -> None:
        """Add a batch: features (N, D), species (N,) int64 in [0, Z)."""
        if features.dim() != 2 or features.shape[1] != self.dim:
            raise ValueError(
                f"features have shape {tuple(features.shape)}, expected (N, {self.dim})"
            )
        species = species.reshape(-1).long().cpu()
        if species.numel() != features.shape[0]:
            raise ValueError(f"{species.numel()} species for {features.shape[0]} feature rows")
        if species.numel() and (species.min() < 0 or species.max() >= self.num_species):
            raise ValueError(
                f"species index out of range [0, {self.num_species}): {species.unique().tolist()}"
            )
        x = features.detach().cpu().double()
        if not torch.isfinite(x).all():
            raise ValueError("non-finite node features: the backbone produced NaN/inf")
        for z in species.unique().tolist():
            xz = x[species == z]
            n_b = float(xz.shape[0])
            mean_b = xz.mean(0)
            centred = xz - mean_b
            self._merge(z, n_b, mean_b, centred.T @ centred)

    def _merge(self, z: int, n_b: float, mean_b: Tensor, scatter_b: Tensor) -> None:
        n_a = float(self.count[z])
        n = n_a + n_b
        delta = mean_b - self.mean[z]
        self.mean[z] += delta * (n_b / n)
        self.scatter[z] += scatter_b + torch.outer(delta, delta) * (n_a * n_b / n)
        self.count[z] = n

    def covariance(self) -> Tensor:
        """(Z, D, D) unbiased sample covariance (zeros where a species has < 2 atoms)."""
        denom = (self.count - 1.0).clamp_min(1.0)[:, None, None]
        return torch.where(self.count[:, None, None] >= 2, self.scatter / denom, 0.0)

    def pooled(self) -> tuple[float, Tensor, Tensor]:
        """Count, mean (D,) and covariance (D, D) of all atoms of every species together."""
        n = float(self.count.sum())
        if n < 2:
            raise ValueError(f"feature statistics need at least 2 atoms, got {n:g}")
        mean = (self.count[:, None] * self.mean).sum(0) / n
        delta = self.mean - mean
        scatter = self.scatter.sum(0) + torch.einsum("z,zi,zj->ij", self.count, delta, delta)
        return n, mean, scatter / (n - 1.0)

    def finalize(
        self, shrinkage: float = DEFAULT_SHRINKAGE, jitter: float = DEFAULT_JITTER
    ) -> FittedStatistics:
        """Shrunk covariances and their whitening matrices.

        C_z <- (1 - e) C_z + e diag(C_z) + jitter * mean(diag C_z) I with e = max(shrinkage,
        D / (n_z + D)): an element with few atoms is shrunk more toward the diagonal, and every
        matrix is positive definite. Species with fewer than 2 atoms get the pooled statistics.
        """
        if not 0.0 <= shrinkage <= 1.0:
            raise ValueError(f"invalid shrinkage={shrinkage!r}: must lie in [0, 1]")
        if not jitter > 0.0:
            raise ValueError(f"invalid jitter={jitter!r}: must be > 0")
        n_all, mean_all, cov_all = self.pooled()
        mean, cov = self.mean.clone(), self.covariance()
        counts = self.count.clone()
        # mean over the species' atoms of (h - m)(h - m)^T: sets <d^2> = tr(C^-1 S) in closed form
        spread = self.scatter / self.count.clamp_min(1.0)[:, None, None]
        for z in range(self.num_species):
            if counts[z] < 2:
                mean[z], cov[z], counts[z] = mean_all, cov_all, 0.0
                spread[z] = cov_all * (n_all - 1.0) / n_all
        n_eff = torch.where(counts >= 2, counts, torch.full_like(counts, n_all))
        eps = torch.clamp(self.dim / (n_eff + self.dim), min=shrinkage)[:, None, None]
        diag = torch.diag_embed(cov.diagonal(dim1=-2, dim2=-1))
        scale = cov.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-300)[:, None, None]
        eye = torch.eye(self.dim, dtype=torch.float64)
        shrunk = (1.0 - eps) * cov + eps * diag + jitter * scale * eye
        chol = torch.linalg.cholesky(shrunk)
        whitening = torch.linalg.solve_triangular(chol, eye.expand_as(chol), upper=False)
        mean_sq = torch.einsum("zij,zjk->zik", whitening, spread)
        mean_sq = torch.einsum("zik,zik->z", mean_sq, whitening)  # tr(W S W^T) = <d^2>
        whitening = whitening / mean_sq.clamp_min(1e-300).sqrt()[:, None, None]
        return FittedStatistics(mean, shrunk, whitening, self.count.clone())


class FeatureDensity(nn.Module):
    """Normalised squared Mahalanobis distance of each atom's descriptors to its element's
    training atoms, and the evidence factor built on it.

    Args:
        num_species: Z (MACE: elements of the z-table; NequIP: model types).
        dim: D, the descriptor dimension.

    Buffers: ``mean`` (Z, D), ``whitening`` (Z, D, D), ``count`` (Z,); ``strength`` () = a and
    ``power`` () = p of the evidence factor 1 / (1 + a r^(2p)) (a = 0 switches the density-aware
    evidence off while the distance is still reported); the neighbour bank ``bank`` (B, D),
    ``bank_species`` (B,), ``bank_local_scale`` (B,), ``bank_temperature`` (Z,),
    ``bank_scale`` (Z,) and ``neighbour_weight`` () (B = 0 and w = 0 until
    :meth:`load_neighbours`: the Gaussian distance alone); ``prior_variance`` (Z,) V_z of the
    force prior, (eV/A)^2 per Cartesian component (0 until :meth:`load_force_prior`: no prior).
    The bank is sorted by element; ``bank_offsets`` (Z + 1 ints, an attribute kept in step with
    ``bank_species``) says where each element's rows start.

    Forward:
        features (N, D), species (N,) int64 -> r^2 (N,), dimensionless, mean 1 over the training
        atoms of each element; 0 for every atom while no statistics are fitted.
    """

    def __init__(self, num_species: int, dim: int):
        super().__init__()
        self.num_species = int(num_species)
        self.dim = int(dim)
        self.register_buffer("mean", torch.zeros(num_species, dim))
        self.register_buffer("whitening", torch.zeros(num_species, dim, dim))
        self.register_buffer("count", torch.zeros(num_species))
        self.register_buffer("strength", torch.full((), DEFAULT_STRENGTH))
        self.register_buffer("power", torch.full((), DEFAULT_POWER))
        self.register_buffer("prior_variance", torch.zeros(num_species))
        self.register_empty_bank()

    def register_empty_bank(self) -> None:
        """(Re)register the neighbour buffers, empty (B = 0, w = 0), in the dtype of ``mean``."""
        like = self._buffers["mean"]
        z, d = self.num_species, self.dim
        self.register_buffer("bank", torch.zeros(0, d, dtype=like.dtype, device=like.device))
        self.register_buffer("bank_species", torch.zeros(0, dtype=torch.long, device=like.device))
        options = {"dtype": like.dtype, "device": like.device}
        self.register_buffer("bank_local_scale", torch.zeros(0, **options))
        self.register_buffer("bank_temperature", torch.zeros(z, **options))
        self.register_buffer("bank_scale", torch.zeros(z, **options))
        self.register_buffer("neighbour_weight", torch.zeros((), **options))
        # Z + 1 >= 2 ints: TorchScript infers List[int] (an annotation would be a string here)
        self.bank_offsets = [0] * (z + 1)

    def index_bank(self) -> None:
        """Sort the bank by element (a bank of this version already is) and set
        ``bank_offsets`` from ``bank_species``."""
        species = self._buffers["bank_species"]
        if species.numel() > 1 and bool((species[1:] < species[:-1]).any()):
            order = torch.sort(species, stable=True).indices
            for name in BANK_ROWS:
                self._buffers[name] = self._buffers[name][order].contiguous()
        self.bank_offsets = element_offsets(self._buffers["bank_species"], self.num_species)

    def forward(self, features: Tensor, species: Tensor) -> Tensor:
        species = species.reshape(-1)
        n = features.shape[0]
        diff = features - self.mean.to(features.dtype)[species]  # (N, D)
        whitening = self.whitening.to(features.dtype)
        # W_z (h - m_{z_i}) for every z in one matmul, then the block of the atom's own species:
        # O(Z D^2) per atom, no (N, D, D) gather
        projected = (diff @ whitening.reshape(-1, self.dim).transpose(0, 1)).reshape(
            n, self.num_species, self.dim
        )
        own = projected.gather(1, species.reshape(n, 1, 1).expand(n, 1, self.dim)).reshape(
            n, self.dim
        )
        gaussian = (own * own).sum(-1)
        if self.bank.shape[0] == 0:
            return gaussian
        neighbours = neighbour_distance_sq(
            own,
            species,
            self.bank.to(features.dtype),
            self.bank_offsets,
            self.bank_temperature.to(features.dtype),
            self.bank_scale.to(features.dtype),
            fallback=gaussian,  # elements without stored atoms: the Gaussian distance alone
            local_scale=self.bank_local_scale.to(features.dtype),
        )
        weight = self.neighbour_weight.to(features.dtype)
        return (1.0 - weight) * gaussian + weight * neighbours

    def evidence_factor(self, distance_sq: Tensor) -> Tensor:
        """1 / (1 + a r^(2p)), (N,): 1 at the training atoms' centre (and without statistics),
        -> 0 far away, bounded below by 1 / (1 + MAX_EVIDENCE_DIVISOR) (r is capped at
        sqrt(MAX_DISTANCE_SQ)) so that float32 models stay finite, gradients included, for any
        input; the caps only act beyond r ~ 10^3, far outside anything a model has seen."""
        a = self.strength.to(distance_sq.dtype)
        p = self.power.to(distance_sq.dtype)
        # literals = MAX_DISTANCE_SQ, MAX_EVIDENCE_DIVISOR: TorchScript cannot read module-level
        # floats, and saves float class constants of this size as ints it then refuses to load
        growth = a * torch.pow(distance_sq.clamp(max=1.0e12), p)
        return 1.0 / (1.0 + growth.clamp(max=1.0e12))

    def prior_evidence(self, variance: Tensor, species: Tensor) -> Tensor:
        """The evidence of the force prior, v / V_z (shape of ``variance``): ``variance`` (N,) or
        (N, K) v, the epistemic variance per unit evidence ((eV/A)^2: E[Sigma] per component for
        e2ip, beta / (alpha - 1) for eIP), of atoms of ``species`` (N,) int64. Combined with the
        evidence in quadrature (``torch.hypot(kappa, prior)``), it makes 1 / Var_epistemic^2 =
        1 / Var_raw^2 + 1 / V_z^2; exactly 0 for an element without a fitted prior, and
        hypot(kappa, 0) = kappa bit for bit."""
        prior = self.prior_variance.to(variance.dtype)[species.reshape(-1)]  # (N,)
        if variance.dim() == 2:
            prior = prior.unsqueeze(1)
        evidence = variance / prior.clamp_min(1.0e-30)
        return torch.where(prior > 0.0, evidence, torch.zeros_like(evidence))

    @property
    def has_force_prior(self) -> bool:
        return bool((self.prior_variance > 0).any())

    @torch.no_grad()
    def load_force_prior(
        self, mean_square_force: Tensor, multiple: float = DEFAULT_FORCE_PRIOR
    ) -> None:
        """Store V_z = k^2 <F_c^2>_z from ``mean_square_force`` (Z,), the mean squared reference
        force component of each element's training atoms, (eV/A)^2 (0 for an element without
        training atoms: no prior for it), and k = ``multiple`` > 0."""
        values = torch.as_tensor(mean_square_force, dtype=torch.float64).reshape(-1)
        if values.shape[0] != self.num_species:
            raise ValueError(
                f"a force prior of {values.shape[0]} species for a density of {self.num_species}"
            )
        if not bool(torch.isfinite(values).all()) or bool((values < 0).any()):
            raise ValueError(f"invalid mean squared forces {values.tolist()}: must be finite, >= 0")
        if not (math.isfinite(multiple) and multiple > 0.0):
            raise ValueError(f"invalid force prior multiple={multiple!r}: must be a number > 0")
        prior = float(multiple) ** 2 * values
        self.prior_variance.copy_(prior.to(self.prior_variance.dtype))

    @property
    def fitted(self) -> bool:
        return bool(self.whitening.abs().sum() > 0)

    @torch.no_grad()
    def load_statistics(self, stats: FittedStatistics) -> None:
        """Store finalised statistics (cast to the buffers' dtype and device)."""
        expected = (self.num_species, self.dim)
        if tuple(stats.mean.shape) != expected:
            raise ValueError(
                f"statistics of shape {tuple(stats.mean.shape)} for a density of {expected}"
            )
        for name in ("mean", "whitening", "count"):
            buffer = getattr(self, name)
            buffer.copy_(getattr(stats, name).to(buffer.dtype))

    @property
    def has_neighbours(self) -> bool:
        return self.bank.shape[0] > 0

    @torch.no_grad()
    def load_neighbours(self, fitted: FittedNeighbours, weight: float = NEIGHBOUR_WEIGHT) -> None:
        """Store a fitted neighbour bank (whitened with this density's current statistics) and
        the weight w of its distance in r^2."""
        if fitted.bank.dim() != 2 or fitted.bank.shape[1] != self.dim:
            raise ValueError(
                f"a neighbour bank of shape {tuple(fitted.bank.shape)} for descriptors of "
                f"dimension {self.dim}"
            )
        if tuple(fitted.temperature.shape) != (self.num_species,):
            raise ValueError(
                f"a neighbour bank of {fitted.temperature.shape[0]} species for a density of "
                f"{self.num_species}"
            )
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"invalid neighbour weight={weight!r}: must lie in [0, 1]")
        like = self.mean
        self.bank = fitted.bank.to(dtype=like.dtype, device=like.device).clone()
        self.bank_species = fitted.species.to(device=like.device).clone()
        self.bank_local_scale = fitted.local_scale.to(dtype=like.dtype, device=like.device).clone()
        self.bank_temperature.copy_(fitted.temperature.to(like.dtype))
        self.bank_scale.copy_(fitted.scale.to(like.dtype))
        self.neighbour_weight.fill_(float(weight) if fitted.bank.shape[0] else 0.0)
        self.index_bank()

    @torch.no_grad()
    def reset(self) -> None:
        """Forget the statistics, the neighbour bank and the force prior: d^2 = 0 for every atom
        again, and no prior evidence."""
        for name in ("mean", "whitening", "count", "prior_variance"):
            getattr(self, name).zero_()
        self.register_empty_bank()

    @torch.no_grad()
    def set_evidence_form(self, strength: float, power: float) -> None:
        """a (>= 0) and p (>= 1) of the evidence factor 1 / (1 + a r^(2p))."""
        if not strength >= 0.0:
            raise ValueError(f"invalid density strength={strength!r}: must be >= 0")
        if not power >= 1.0:
            raise ValueError(
                f"invalid density power={power!r}: must be >= 1 (smaller powers have an "
                "infinite gradient at r = 0)"
            )
        self.strength.fill_(float(strength))
        self.power.fill_(float(power))

    def __setstate__(self, state) -> None:
        # pickled by a version without some of the buffers: add their defaults
        super().__setstate__(state)
        defaults = {"strength": DEFAULT_STRENGTH, "power": DEFAULT_POWER}
        for name, value in defaults.items():
            if name not in self._buffers:
                like = self._buffers["count"]
                self.register_buffer(name, torch.full((), value, dtype=like.dtype))
        if "prior_variance" not in self._buffers:  # pickled before the force prior: none
            self.register_buffer("prior_variance", torch.zeros_like(self._buffers["count"]))
        if "bank" not in self._buffers:  # pickled before the neighbour distance existed
            self.register_empty_bank()
            return
        if "bank_local_scale" not in self._buffers:  # pickled before the local scale: rho = 1
            bank = self._buffers["bank"]
            self.register_buffer("bank_local_scale", bank.new_ones(bank.shape[0]))
        if "bank_offsets" not in self.__dict__:  # pickled before the bank was indexed
            self.index_bank()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a model saved before the density (or one of its buffers) existed: the defaults
        # (no statistics, a = 1, p = 2, no force prior; saved before the local scale: rho = 1)
        defaults = {"strength": DEFAULT_STRENGTH, "power": DEFAULT_POWER, "bank_local_scale": 1.0}
        saved_bank = state_dict.get(prefix + "bank")
        rows = saved_bank.shape[0] if saved_bank is not None else 0
        for name in BANK_ROWS:  # B is the saved model's (0 if saved without)
            like = self._buffers[name]
            shape = (rows, *like.shape[1:])
            if tuple(like.shape) != shape:
                self._buffers[name] = torch.zeros(shape, dtype=like.dtype, device=like.device)
        for name, buffer in self._buffers.items():
            state_dict.setdefault(prefix + name, torch.full_like(buffer, defaults.get(name, 0.0)))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.index_bank()
