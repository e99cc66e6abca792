"""Framework-agnostic evidential force uncertainty: heads, losses, uncertainties, metrics, UDD.

Imports torch, e3nn, numpy, scipy and torchmetrics only; never MACE or NequIP.
"""

from . import keys
from .build import HEAD_CLASSES, build_head
from .config import HEAD_KINDS, HeadConfig
from .covariance_head import EquivariantCovarianceHead
from .e2ip_head import EquivariantEvidentialHead
from .eip_head import ComponentwiseEvidentialHead
from .entropy import configurational_entropy
from .feature_density import FeatureDensity, FeatureStatistics, FittedStatistics
from .geometric_features import GeometricFeatures
from .head_base import HeadBase, reads_geometry
from .invariants import InvariantFeatures
from .losses import (
    energy_loss,
    evidential_force_nll,
    evidential_force_regularizer,
    gaussian_force_nll,
    niw_evidence_regularizer,
    niw_student_t_nll,
    tilted_loss,
)
from .mve_head import EquivariantGaussianHead
from .objective import evidential_total_loss
from .output_range import OutputRange, OutputRangeStatistics
from .outputs import uncertainty_fields
from .params import ForceUncertainty, GaussianParams, NIGParams, NIWParams
from .recalibration import VarianceScale, fit_variance_scale, scale_params
from .udd import UDDConfig, limit_bias_forces, udd_bias_energy, udd_bias_forces
from .uncertainty import (
    gaussian_uncertainty,
    nig_uncertainty,
    niw_uncertainty,
    structure_uncertainty,
)

__all__ = [
    "HEAD_CLASSES",
    "HEAD_KINDS",
    "ComponentwiseEvidentialHead",
    "EquivariantCovarianceHead",
    "EquivariantEvidentialHead",
    "EquivariantGaussianHead",
    "FeatureDensity",
    "FeatureStatistics",
    "FittedStatistics",
    "GeometricFeatures",
    "ForceUncertainty",
    "GaussianParams",
    "HeadBase",
    "HeadConfig",
    "InvariantFeatures",
    "NIGParams",
    "NIWParams",
    "OutputRange",
    "OutputRangeStatistics",
    "UDDConfig",
    "VarianceScale",
    "build_head",
    "configurational_entropy",
    "energy_loss",
    "evidential_force_nll",
    "evidential_force_regularizer",
    "evidential_total_loss",
    "fit_variance_scale",
    "gaussian_force_nll",
    "gaussian_uncertainty",
    "keys",
    "limit_bias_forces",
    "nig_uncertainty",
    "niw_evidence_regularizer",
    "niw_student_t_nll",
    "niw_uncertainty",
    "reads_geometry",
    "scale_params",
    "structure_uncertainty",
    "tilted_loss",
    "udd_bias_energy",
    "udd_bias_forces",
    "uncertainty_fields",
]
