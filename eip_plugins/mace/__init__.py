"""MACE adapter: ``mace_run_train --head {e2ip,eip,mve}``, uncertainty in ``mace_eval_configs``,
and :class:`MACEUQCalculator` (see ``eip_plugins/mace/README.md``).

Importing this package is cheap (no torch, no MACE): the ``.pth`` start-up hook imports
:mod:`eip_plugins.mace.hook` from here. The heavy names are loaded on first access.
"""

_LAZY = {
    "MACEUQCalculator": "calculator",
    "EvidentialMACE": "model",
    "EvidentialLoss": "loss",
    "register": "registration",
}

__all__ = sorted(_LAZY)


def require_mace() -> None:
    """Import MACE; where it is not installed, raise an ImportError that says what to install.

    (``find_spec("mace")`` is not enough: any folder named ``mace`` on ``sys.path`` passes for a
    namespace package.)"""
    try:
        import mace.modules  # noqa: F401
    except ModuleNotFoundError as err:
        if (err.name or "").split(".")[0] != "mace":
            raise
        raise ImportError(
            "eip_plugins.mace needs MACE, which is not installed in this environment: "
            'pip install "eip-plugins[mace]" (mace-torch 0.3.16; it cannot share an environment '
            "with nequip, which needs e3nn >= 0.6 -- use .venv-mace)"
        ) from err


def __getattr__(name):
    if name in _LAZY:
        import importlib

        require_mace()
        module = importlib.import_module(f"{__name__}.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
