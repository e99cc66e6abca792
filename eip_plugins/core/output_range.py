"""The range of a head's learned invariant outputs over the training atoms, and the clamp to it:
bounded extrapolation, fitted with SPEC §1c's feature statistics.

A head's learned outputs (the log scale of Psi, the evidence kappa, the degrees of freedom nu_w,
eIP's NIG parameters) are constrained only where the training atoms are. On an atom unlike any of
them the head's MLP extrapolates them freely: one trained e2ip head of the benchmark (a
scalar-only MACE backbone) put Psi at its bound e^10 psi0 and nu_w at its floor on 6 % of the
atoms of the unseen molecules, sigma up to 3.3e3 eV/A before the density factor (force errors
there: at most 2.4 eV/A). :class:`OutputRange` clamps each output, per element, to the interval it
covered on the training atoms. Out of distribution the head then answers as it does at the edge
of its training data, and the epistemic variance grows through the density factor alone
(:mod:`.feature_density`): a smooth function of the distance to the training atoms.

Every atom whose outputs lie inside the fitted intervals (every training atom) is unchanged, bit
for bit, and so is every atom of a head whose range was never fitted.
"""

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

#: the bound of an unfitted (or one-sided) interval: outputs are never clamped by it
NO_BOUND = 1.0e30


class OutputRange(nn.Module):
    """Per-species interval [lower, upper] of K invariant head outputs, and the clamp to it.

    Args:
        num_species: Z (MACE: elements of the z-table; NequIP: model types).
        names: the K outputs' names (for reports), e.g. ``("log_scale", "kappa", ...)``.
        upper_only: names of outputs that are only bounded from above (e.g. a norm, which a
            lower bound would inflate in an arbitrary direction).

    Buffers: ``lower`` (Z, K), ``upper`` (Z, K); +-:data:`NO_BOUND` until fitted.

    Forward:
        values (N, K), species (N,) int64 or ``None`` (all species 0) -> (N, K), each value
        clamped to its species' interval; the same tensor values (bit for bit) inside it.
    """

    names: List[str]
    __jit_unused_properties__ = ["fitted"]

    def __init__(self, num_species: int, names: Sequence[str], upper_only: Sequence[str] = ()):
        super().__init__()
        unknown = sorted(set(upper_only) - set(names))
        if unknown:
            raise ValueError(f"upper_only names {unknown} are not among the outputs {list(names)}")
        self.num_species = int(num_species)
        self.names = [str(n) for n in names]
        self.upper_only = [n in set(upper_only) for n in self.names]
        k = len(self.names)
        self.register_buffer("lower", torch.full((self.num_species, k), -NO_BOUND))
        self.register_buffer("upper", torch.full((self.num_species, k), NO_BOUND))

    def forward(self, values: Tensor, species: Optional[Tensor] = None) -> Tensor:
        if species is None:
            species = torch.zeros(values.shape[0], dtype=torch.long, device=values.device)
        species = species.reshape(-1)
        lower = self.lower.to(values.dtype)[species]
        upper = self.upper.to(values.dtype)[species]
        return torch.minimum(torch.maximum(values, lower), upper)

    @property
    def fitted(self) -> bool:
        return bool((self.upper < NO_BOUND).any())

    @torch.no_grad()
    def load_range(self, lower: Tensor, upper: Tensor) -> None:
        """Store the intervals, (Z, K) each; one-sided outputs keep ``lower = -NO_BOUND``."""
        expected = tuple(self.lower.shape)
        if tuple(lower.shape) != expected or tuple(upper.shape) != expected:
            raise ValueError(
                f"output ranges of shape {tuple(lower.shape)} / {tuple(upper.shape)} for "
                f"{expected} (species, outputs)"
            )
        if not bool((lower <= upper).all()):
            raise ValueError("output range with lower > upper")
        lower = lower.clone().double()
        lower[:, torch.tensor(self.upper_only, dtype=torch.bool)] = -NO_BOUND
        self.lower.copy_(lower.to(self.lower.dtype))
        self.upper.copy_(upper.to(self.upper.dtype))

    @torch.no_grad()
    def reset(self) -> None:
        """Forget the intervals: no output is clamped."""
        self.lower.fill_(-NO_BOUND)
        self.upper.fill_(NO_BOUND)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a model saved before the output range existed: nothing is clamped
        for name, value in (("lower", -NO_BOUND), ("upper", NO_BOUND)):
            state_dict.setdefault(prefix + name, torch.full_like(self._buffers[name], value))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class OutputRangeStatistics:
    """Streaming per-species minimum and maximum of K outputs (float64).

    Species without atoms get the range of all atoms pooled (as the feature statistics do).
    """

    def __init__(self, num_species: int, num_outputs: int):
        self.num_species, self.num_outputs = int(num_species), int(num_outputs)
        self.lower = torch.full((num_species, num_outputs), float("inf"), dtype=torch.float64)
        self.upper = torch.full((num_species, num_outputs), float("-inf"), dtype=torch.float64)
        self.count = torch.zeros(num_species, dtype=torch.float64)

    @torch.no_grad()
    def update(self, values: Tensor, species: Optional[Tensor]) -> None:
        """Add a batch: values (N, K), species (N,) int64 in [0, Z) or ``None`` (species 0)."""
        values = values.detach().cpu().double()
        if values.dim() != 2 or values.shape[1] != self.num_outputs:
            raise ValueError(
                f"head outputs of shape {tuple(values.shape)}, expected (N, {self.num_outputs})"
            )
        if not torch.isfinite(values).all():
            raise ValueError("non-finite head outputs on the training structures")
        if species is None:
            species = torch.zeros(values.shape[0], dtype=torch.long)
        species = species.reshape(-1).long().cpu()
        for z in species.unique().tolist():
            vz = values[species == z]
            self.lower[z] = torch.minimum(self.lower[z], vz.min(0).values)
            self.upper[z] = torch.maximum(self.upper[z], vz.max(0).values)
            self.count[z] += float(vz.shape[0])

    def finalize(self) -> Tuple[Tensor, Tensor]:
        """(lower, upper), (Z, K) each."""
        if not bool((self.count > 0).any()):
            raise ValueError("no training atoms to fit the head's output range on")
        seen = self.count > 0
        lower, upper = self.lower.clone(), self.upper.clone()
        lower[~seen] = self.lower[seen].min(0).values
        upper[~seen] = self.upper[seen].max(0).values
        return lower, upper
