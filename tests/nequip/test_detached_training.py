"""``force_objective: detached`` through ``nequip-train``: a model trained with a head is the
plain model of the same seed, bit for bit, with Lightning's gradient clipping switched on.

The plain run uses the benchmark's plain config (``examples/benchmark/nequip_configs/plain.yaml``:
``config_with_eip`` without the head, NequIP's ``EnergyForceLoss``); both runs get the same
overrides. ``gradient_clip_val: 0.01`` clips at every step, so the test needs both couplings
removed: the loss coefficients normalised over NequIP's terms only (``DetachedObjectiveLoss``)
and the head clipped apart from the model (``DetachedHeadClipping``).
"""

from __future__ import annotations

import torch
from nequip_helpers import SMALL_MODEL, plain_train_args, run_parallel, train_args

CLIPPING = ["++trainer.gradient_clip_val=0.01", "++seed=11"]
MODEL = [arg for arg in SMALL_MODEL if not arg.startswith("++head_options")]


def _tensors(ckpt, wrapped: bool) -> dict[str, torch.Tensor]:
    """Floating-point tensors of the model and its EMA copy (``ema.ema_weight_<k>``, k in the
    parameter order: the head's come last), by the name they have in a plain model: the head
    wrapper (``wrapped``) puts the model one ``func.`` level deeper."""
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    prefix = "model.sole_model.model."
    out = {}
    for name, value in state.items():
        if not (torch.is_tensor(value) and value.is_floating_point()):
            continue
        if wrapped and name.startswith(prefix + "func."):
            name = prefix + name[len(prefix + "func.") :]
        out[name] = value
    return out


def test_a_detached_head_leaves_the_model_bit_identical_to_a_plain_run(tmp_path):
    plain, with_head = tmp_path / "plain", tmp_path / "e2ip"
    plain_cmd = plain_train_args(plain, 2, "++model_type_names=[C,H,O]", *MODEL, *CLIPPING)
    head_cmd = train_args(with_head, "e2ip", 2, "++run=[train]", *CLIPPING)
    run_parallel([(plain_cmd, tmp_path / "plain_log"), (head_cmd, tmp_path / "e2ip_log")])
    assert "clipped apart" in (with_head / "train.log").read_text()
    reference = _tensors(plain / "last.ckpt", wrapped=False)
    trained = _tensors(with_head / "last.ckpt", wrapped=True)
    assert sum(n.startswith("ema.") for n in reference) > 10 and set(reference) <= set(trained)
    differ = [name for name in reference if not torch.equal(reference[name], trained[name])]
    assert differ == []
