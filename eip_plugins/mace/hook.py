"""Lazy import hook that plugs eip-plugins into an unmodified mace-torch 0.3.16.

MACE has no plugin system. ``eip_plugins_mace_hook.pth`` (installed into site-packages by both
``pip install .`` and ``pip install -e .``, see :mod:`eip_plugins.mace._build`) runs
:func:`bootstrap` at interpreter start. That only appends a tiny finder to ``sys.meta_path``; it
imports neither torch nor MACE. When (and only when) ``mace.cli.run_train`` or
``mace.cli.eval_configs`` is imported, the finder lets the normal loader execute the module and
then calls :func:`eip_plugins.mace.registration.register` on it, which checks the MACE version
(exactly 0.3.16, else a clear warning and no change) and wraps the patch points listed there.

Switches:
    ``EIP_PLUGINS_DISABLE=1``: do nothing (MACE behaves exactly as without the package).
    A MACE that ships ``mace.tools.plugins`` (``patches/mace-plugins-0.3.16.diff`` applied)
    discovers the plugin through the ``mace.plugins`` entry point itself; the hook then stands
    aside.

Limitation: ``python -m mace.cli.run_train`` executes the module as ``__main__`` without an import,
so it is not hooked; use the ``mace_run_train`` / ``mace_eval_configs`` console scripts.
"""

from __future__ import annotations

import importlib.util
import sys

from ..post_import import PostImportFinder
from ..post_import import install as install_finder
from ..switches import plugins_disabled

TARGETS = frozenset({"mace.cli.run_train", "mace.cli.eval_configs"})


def disabled() -> bool:
    return plugins_disabled()


def mace_has_plugin_support() -> bool:
    """True when the installed MACE discovers ``mace.plugins`` entry points itself."""
    try:
        return importlib.util.find_spec("mace.tools.plugins") is not None
    except (ImportError, ValueError):
        return False


def _register(module) -> None:
    """Register the plugin into an executed MACE CLI module (unless switched off, or MACE
    discovers it itself)."""
    if disabled() or mace_has_plugin_support():
        return
    from .registration import register

    register(module, source="hook")


class MaceHookFinder(PostImportFinder):
    """Meta-path finder that only reacts to :data:`TARGETS`."""

    def __init__(self):
        super().__init__(TARGETS, _register, active=lambda: not disabled())


def installed() -> bool:
    return any(isinstance(f, MaceHookFinder) for f in sys.meta_path)


def install() -> bool:
    """Put the finder on ``sys.meta_path`` (once). Returns True if it is installed."""
    if disabled():
        return False
    install_finder(MaceHookFinder())  # also registers into targets imported before the hook
    return True


def uninstall() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, MaceHookFinder)]


def bootstrap() -> None:
    """Entry of the ``.pth`` file: install the hook, never fail interpreter start-up."""
    try:
        install()
    except Exception as err:  # noqa: BLE001 - a broken plugin must not break Python
        print(f"eip-plugins: MACE import hook not installed ({err!r})", file=sys.stderr)
