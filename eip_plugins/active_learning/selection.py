"""Choose which MD frames to label."""

from __future__ import annotations

import hashlib

import numpy as np


def select_uncertain_frames(
    uncertainty: np.ndarray,
    threshold: float,
    min_spacing: int = 1,
    max_frames: int | None = None,
    threshold_max: float = np.inf,
) -> list[int]:
    """Indices of frames with uncertainty above ``threshold`` and at most ``threshold_max``,
    most uncertain first, at least ``min_spacing`` frames apart, at most ``max_frames``;
    returned in trajectory order.

    Args:
        uncertainty: (T,) per-frame uncertainty (mean or max sigma_i), eV/A.
        threshold_max: frames above it are left out (DP-GEN's upper trust level: structures far
            beyond anything the model knows, often unphysical).
    """
    if min_spacing < 1:
        raise ValueError(f"invalid min_spacing={min_spacing!r}: must be >= 1")
    u = np.asarray(uncertainty, dtype=float)
    chosen: list[int] = []
    for i in np.argsort(-u, kind="stable"):
        if not u[i] <= threshold_max:
            continue
        if not u[i] > threshold:
            break
        if all(abs(int(i) - j) >= min_spacing for j in chosen):
            chosen.append(int(i))
            if max_frames is not None and len(chosen) >= max_frames:
                break
    return sorted(chosen)


def frame_key(atoms, decimals: int = 6) -> str:
    """Content hash of a structure (numbers, positions rounded to 1e-6 A, cell)."""
    h = hashlib.sha1()
    h.update(np.asarray(atoms.numbers, dtype=np.int64).tobytes())
    h.update(np.round(atoms.get_positions(), decimals).astype(np.float64).tobytes())
    h.update(np.round(np.asarray(atoms.cell), decimals).astype(np.float64).tobytes())
    return h.hexdigest()
