"""Active learning by evidential uncertainty: MD/UDD walkers -> select -> label -> retrain,
repeated; walkers and labels run as Dask tasks, and every step resumes after a crash."""

from .holdout import evaluate_holdout
from .labelling import label_frame, label_frames
from .loop import ActiveLearningLoop, ALSettings
from .references import PySCFReference, TBLiteReference, load_reference, tblite_reference
from .retrain import CommandRetrainer
from .selection import frame_key, select_uncertain_frames
from .tasks import DaskTasks, InProcessTasks, open_client

__all__ = [
    "ALSettings",
    "ActiveLearningLoop",
    "CommandRetrainer",
    "DaskTasks",
    "InProcessTasks",
    "PySCFReference",
    "TBLiteReference",
    "evaluate_holdout",
    "frame_key",
    "label_frame",
    "label_frames",
    "load_reference",
    "open_client",
    "select_uncertain_frames",
    "tblite_reference",
]
