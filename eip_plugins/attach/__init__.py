"""Give an already trained model an evidential head: frozen backbone, cached features, head-only
training. Framework adapters supply feature extraction and model writing."""

from .feature_cache import FeatureCache, FeatureChunk
from .head_training import HeadFitResult, fit_head, initial_psi0

__all__ = ["FeatureCache", "FeatureChunk", "HeadFitResult", "fit_head", "initial_psi0"]
