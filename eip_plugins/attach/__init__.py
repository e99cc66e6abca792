"""Give an already trained model an evidential head: frozen backbone, cached features, head-only
training. Framework adapters supply feature extraction and model writing."""

from .feature_cache import FeatureCache, FeatureChunk
from .head_training import HeadFitResult, evaluate_head, fit_head, initial_psi0, train_attached_head
from .labelled_data import AttachError, atomic_write, check_output_path, read_labelled

__all__ = [
    "AttachError",
    "FeatureCache",
    "FeatureChunk",
    "HeadFitResult",
    "atomic_write",
    "check_output_path",
    "evaluate_head",
    "fit_head",
    "initial_psi0",
    "read_labelled",
    "train_attached_head",
]
