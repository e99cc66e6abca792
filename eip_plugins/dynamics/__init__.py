"""MD and uncertainty-driven MD with any uncertainty calculator, plus trajectory analysis."""

from .md import MDSettings, MDTrajectory, run_md
from .order_parameters import distance_pca_order_parameters, trajectory_entropies

__all__ = [
    "MDSettings",
    "MDTrajectory",
    "distance_pca_order_parameters",
    "run_md",
    "trajectory_entropies",
]
