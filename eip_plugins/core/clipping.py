"""Gradient-norm clipping of a head and the model it sits on as two groups.

With the ``detached`` force objective the framework's own loss trains the model and the
evidential loss the head only. Clipping both as one group (what ``clip_grad_norm_`` over all
parameters does) would let the head's gradient shrink the model's step whenever the joint norm
exceeds the bound, so the model would no longer train as without a head. Clipped apart, the
model's gradient is clipped exactly as a plain model's.
"""

from typing import Callable, Iterable, Optional, Set

import torch
from torch import Tensor


def clip_head_and_model_apart(
    parameters: Iterable[Tensor],
    head_ids: Set[int],
    max_norm: float,
    *args,
    clip: Optional[Callable[..., Tensor]] = None,
    **kwargs,
) -> Tensor:
    """Clip the gradients of the head's parameters and of all the others, each group to a total
    norm of ``max_norm``.

    Args:
        parameters: every parameter the optimiser steps, in its order (the relative order of
            each group is kept, so each norm is summed as ``clip`` alone would sum it).
        head_ids: ``id()`` of each parameter of the head.
        max_norm: the bound of each group's gradient norm.
        clip: the clipping function, ``torch.nn.utils.clip_grad_norm_`` by default (a caller
            that has replaced it passes the original); ``args`` and ``kwargs`` go to it
            (``norm_type`` ...).

    Returns:
        The total gradient norm of the model's group before clipping, as ``clip`` returns it for
        a plain model (a () tensor).
    """
    clip = torch.nn.utils.clip_grad_norm_ if clip is None else clip
    parameters = [parameters] if isinstance(parameters, Tensor) else list(parameters)
    head_part = [p for p in parameters if id(p) in head_ids]
    model_part = [p for p in parameters if id(p) not in head_ids]
    if head_part:
        clip(head_part, max_norm, *args, **kwargs)
    return clip(model_part, max_norm, *args, **kwargs)
