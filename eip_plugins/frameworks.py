"""Pick the uncertainty calculator of a framework by name (imports the framework lazily)."""

from __future__ import annotations

FRAMEWORKS = ("mace", "nequip")


def require_framework(framework: str) -> None:
    """Raise an ImportError naming the extra to install when ``framework`` is not importable
    here (MACE and NequIP live in separate environments)."""
    if framework == "mace":
        from .mace import require_mace

        require_mace()
    elif framework == "nequip":
        import eip_plugins.nequip  # noqa: F401  (raises the ImportError naming the extra)
    else:
        raise ValueError(f"unknown framework={framework!r}: one of {FRAMEWORKS}")


def make_uq_calculator(framework: str, model_path: str, udd=None, device: str = "cpu"):
    """An :class:`~eip_plugins.ase_calculator.UncertaintyCalculator` for ``model_path``.

    Args:
        framework: ``"mace"`` (a ``*.model`` trained with ``--head``) or ``"nequip"`` (a
            checkpoint ``.ckpt``, a package ``.nequip.zip``, or a compiled ``.nequip.pt2``).
        udd: ``None`` or a :class:`~eip_plugins.core.udd.UDDConfig`.
    """
    require_framework(framework)
    if framework == "mace":
        from .mace import MACEUQCalculator

        return MACEUQCalculator(
            model_paths=model_path, device=device, default_dtype="float64", udd=udd
        )
    if framework == "nequip":
        from .nequip import NequIPUQCalculator

        if str(model_path).endswith(".pt2"):  # compiled: no uncertainty gradient, no UDD
            return NequIPUQCalculator.from_compiled_model(model_path, device=device, udd=udd)
        return NequIPUQCalculator.from_saved_model(model_path, device=device, udd=udd)
    raise ValueError(f"unknown framework={framework!r}: one of {FRAMEWORKS}")
