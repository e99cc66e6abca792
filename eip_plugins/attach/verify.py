"""The promise of ``eip-attach``: the backbone's predictions do not change by a single bit."""

from __future__ import annotations

import torch


def require_identical_predictions(before: dict, after: dict) -> None:
    """RuntimeError unless ``energy`` (G,) and ``forces`` (N, 3) are bit-identical.

    ``before``: the input model's predictions; ``after``: those of the model with the head.
    """
    for key in ("energy", "forces"):
        if not torch.equal(before[key], after[key]):
            diff = float((before[key] - after[key]).abs().max())
            raise RuntimeError(
                f"the model with the head changes the backbone's {key} (max |diff| {diff:.3g}); "
                "nothing was written"
            )
