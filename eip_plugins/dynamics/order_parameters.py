"""Order parameters and configurational entropy of trajectories (SPEC §2)."""

from __future__ import annotations

import numpy as np

from ..core.entropy import configurational_entropy


def _distance_features(frames) -> np.ndarray:
    """(T, n(n-1)/2) sorted-by-pair interatomic distances (rotation and translation invariant)."""
    n = len(frames[0])
    iu = np.triu_indices(n, k=1)
    return np.stack([f.get_all_distances(mic=f.pbc.any())[iu] for f in frames])


def distance_pca_order_parameters(trajectories: list[list]) -> list[np.ndarray]:
    """Project frames of several trajectories on two shared order parameters.

    The order parameters are the first two principal components of the interatomic-distance
    vectors of all frames pooled, so that trajectories are compared in one coordinate system.

    Returns:
        one (T_k, 2) array per trajectory.
    """
    feats = [_distance_features(frames) for frames in trajectories]
    pooled = np.concatenate(feats)
    mean = pooled.mean(0)
    _, _, vt = np.linalg.svd(pooled - mean, full_matrices=False)
    return [(f - mean) @ vt[:2].T for f in feats]


def trajectory_entropies(trajectories: list[list], n_bins: int = 40) -> list[float]:
    """Normalised configurational entropy of each trajectory on a common 2D grid."""
    projected = distance_pca_order_parameters(trajectories)
    pooled = np.concatenate(projected)
    ranges = ((pooled[:, 0].min(), pooled[:, 0].max()), (pooled[:, 1].min(), pooled[:, 1].max()))
    return [configurational_entropy(p[:, 0], p[:, 1], n_bins, ranges) for p in projected]
