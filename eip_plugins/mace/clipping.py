"""MACE's gradient clipping without the head's gradient in the model's norm (``detached``).

MACE clips ``model.parameters()`` as one group (``torch.nn.utils.clip_grad_norm_(...,
max_norm=--clip_grad)``, default 10) inside ``mace.tools.train.take_step`` /
``take_step_lbfgs``. With a head that group includes the head's parameters, whose evidential
gradient then shrinks the backbone's step whenever the joint norm exceeds the bound: the model
would no longer train as without a head. With the ``detached`` force objective the wrapped step
clips the backbone's and the head's gradients as two groups, each to ``--clip_grad``, so that the
backbone's update is exactly the one of a plain run (tested to the bit); with ``nll`` (the head's
loss trains the backbone) MACE's joint clipping is kept.
"""

from __future__ import annotations

import contextlib
import functools

import torch

from ..core.clipping import clip_head_and_model_apart


@contextlib.contextmanager
def separate_head_clipping(head: torch.nn.Module):
    """Within the context, ``torch.nn.utils.clip_grad_norm_`` clips the parameters of ``head``
    and all others as two groups (each to the given ``max_norm``; the returned norm is the
    others'). Outside, and for parameter lists without the head, it is torch's own."""
    original = torch.nn.utils.clip_grad_norm_
    head_ids = {id(p) for p in head.parameters()}

    @functools.wraps(original)
    def clip_in_two_groups(parameters, max_norm, *args, **kwargs):
        # without head parameters in the list this is ``original`` on the whole list
        return clip_head_and_model_apart(
            parameters, head_ids, max_norm, *args, clip=original, **kwargs
        )

    torch.nn.utils.clip_grad_norm_ = clip_in_two_groups
    try:
        yield
    finally:
        torch.nn.utils.clip_grad_norm_ = original


def wrap_step(step):
    """``take_step`` / ``take_step_lbfgs`` of ``mace.tools.train``; a model with a head whose
    ``detach_backbone`` is set is clipped in two groups (module docstring)."""
    if getattr(step, "__eip_wrapped__", False):
        return step

    @functools.wraps(step)
    def step_with_separate_clipping(*args, **kwargs):
        model = kwargs["model"] if "model" in kwargs else args[0]
        model = getattr(model, "module", model)  # DistributedDataParallel
        head = model._modules.get("head") if hasattr(model, "_modules") else None
        if head is None or not getattr(head, "detach_backbone", False):
            return step(*args, **kwargs)
        with separate_head_clipping(head):
            return step(*args, **kwargs)

    step_with_separate_clipping.__eip_wrapped__ = True
    return step_with_separate_clipping
