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


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f"{__name__}.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
