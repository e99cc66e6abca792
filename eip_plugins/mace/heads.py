"""Which head of a multi-head MACE model to use (MACE's own rule, plus the attached head's)."""

from __future__ import annotations

from collections.abc import Sequence


def select_mace_head(
    heads: Sequence[str], requested: str | None = None, trained_on: str | None = None
) -> str:
    """The MACE head to evaluate.

    ``requested`` if given; else ``trained_on`` (the head whose forces an attached evidential head
    was fit to, see ``eip-attach mace --mace_head``); else MACE's rule, as in
    ``mace.calculators.MACECalculator``: the only head, or the one named ``default``.

    Raises:
        ValueError: naming the model's heads, for an unknown head or an ambiguous choice.
    """
    heads = list(heads)
    choice = requested if requested is not None else trained_on
    if choice is not None:
        if choice not in heads:
            raise ValueError(f"head {choice!r} is not one of the model's heads {heads}")
        return choice
    if len(heads) == 1:
        return heads[0]
    default = [h for h in heads if h.lower() == "default"]
    if not default:
        raise ValueError(
            f"the model has several heads {heads} and none is named 'default': choose one "
            "(--mace_head for eip-attach, head= for the calculator)"
        )
    return default[0]
