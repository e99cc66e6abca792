"""``trainer.callbacks`` entry: Lightning's gradient-norm clipping without the head's gradient in
the model's norm (``force_objective: detached``).

Lightning clips every parameter of the optimiser as one group
(``trainer.gradient_clip_val``, ``gradient_clip_algorithm: norm``). With a head that group
includes the head's parameters, whose evidential gradient would then shrink the model's step
whenever the joint norm exceeds the bound: the model would no longer train as without a head.
With the detached objective this callback makes the training module clip the model's and the
head's gradients as two groups, each to ``gradient_clip_val``
(:func:`eip_plugins.core.clipping.clip_head_and_model_apart`), so that the model trains exactly
as a plain one (tested to the bit). Without clipping, with ``gradient_clip_algorithm: value``
(elementwise: nothing couples) or with ``force_objective: nll`` (the head's loss trains the model)
Lightning's own clipping is kept.

Usage (``trainer.callbacks`` of the config, as ``config_with_eip`` has it)::

    - _target_: eip_plugins.nequip.DetachedHeadClipping
"""

from __future__ import annotations

import logging

import torch
from lightning.pytorch.callbacks import Callback

from eip_plugins.core.clipping import clip_head_and_model_apart

from .head_module import evidential_head_outputs

LOG = logging.getLogger(__name__)


def detached_heads(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The core heads inside ``module`` that train on detached forces and features."""
    return [
        output.head
        for output in evidential_head_outputs(module)
        if getattr(output.head, "detach_backbone", False)
    ]


class DetachedHeadClipping(Callback):
    """Clip a detached head's gradients apart from the model's (module docstring)."""

    def on_fit_start(self, trainer, pl_module) -> None:
        if not trainer.gradient_clip_val or (trainer.gradient_clip_algorithm or "norm") != "norm":
            return
        heads = detached_heads(pl_module)
        if not heads:
            return
        head_ids = {id(p) for head in heads for p in head.parameters()}
        lightning_clipping = pl_module.configure_gradient_clipping

        def configure_gradient_clipping(
            optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
        ):
            if not gradient_clip_val or (gradient_clip_algorithm or "norm") != "norm":
                return lightning_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
            parameters = [p for group in optimizer.param_groups for p in group["params"]]
            clip_head_and_model_apart(parameters, head_ids, float(gradient_clip_val))

        # Lightning looks the hook up on the module instance (trainer/call.py)
        pl_module.configure_gradient_clipping = configure_gradient_clipping
        LOG.info(
            "gradient clipping (norm %g): the detached head and the model are clipped apart",
            trainer.gradient_clip_val,
        )
