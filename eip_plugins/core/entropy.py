"""Configurational entropy of a trajectory (eIP paper, SPEC §2)."""

from __future__ import annotations

import numpy as np


def configurational_entropy(
    order_parameter_1: np.ndarray,
    order_parameter_2: np.ndarray,
    n_bins: int = 40,
    ranges: tuple[tuple[float, float], tuple[float, float]] | None = None,
) -> float:
    """Normalised Shannon entropy of the 2D histogram of two order parameters.

    Args:
        order_parameter_1, order_parameter_2: (T,) values per frame.
        n_bins: N_e, bins per axis (N_e x N_e grid).
        ranges: histogram ranges; compare trajectories only on a common range.

    Returns:
        H / (2 log N_e) in [0, 1]: 0 for a single visited bin, 1 for a uniform visit of all bins.
    """
    a = np.asarray(order_parameter_1, dtype=float).reshape(-1)
    b = np.asarray(order_parameter_2, dtype=float).reshape(-1)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(
            f"order parameters must be non-empty and of equal length, got {a.size} and {b.size}"
        )
    if n_bins < 2:
        raise ValueError(f"invalid n_bins={n_bins!r}: must be >= 2")
    counts, _, _ = np.histogram2d(a, b, bins=n_bins, range=ranges)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum() / (2.0 * np.log(n_bins)))
