"""Active learning by evidential uncertainty: MD/UDD -> select -> label -> retrain, repeated."""

from .labelling import label_frames, tblite_reference
from .loop import ActiveLearningLoop, ALSettings
from .retrain import CommandRetrainer
from .selection import frame_key, select_uncertain_frames

__all__ = [
    "ALSettings",
    "ActiveLearningLoop",
    "CommandRetrainer",
    "frame_key",
    "label_frames",
    "select_uncertain_frames",
    "tblite_reference",
]
