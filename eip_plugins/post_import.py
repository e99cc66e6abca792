"""Run a function on a module right after it is imported (a meta-path finder; no framework).

The frameworks' own command-line modules (``mace.cli.run_train``, ``nequip.scripts.compile``)
have no plugin points where eip-plugins needs them. A :class:`PostImportFinder` on
``sys.meta_path`` lets the normal loader execute one of the named modules and then calls
``callback(module)``, before the importer (e.g. a console script's ``from ... import main``)
sees the module: the callback may wrap the module's functions. Other imports pass through
untouched.
"""

from __future__ import annotations

import importlib.abc
import sys
from typing import Callable, Iterable, Optional


class CallbackLoader(importlib.abc.Loader):
    """Delegates to the real loader, then calls ``callback`` on the executed module."""

    def __init__(self, loader, callback: Callable):
        self._loader = loader
        self._callback = callback

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        self._callback(module)

    def __getattr__(self, name):
        return getattr(self._loader, name)


class PostImportFinder(importlib.abc.MetaPathFinder):
    """Meta-path finder that reacts to the modules ``targets`` only.

    Args:
        targets: fully qualified module names.
        callback: ``callback(module)``, called once each target has been executed.
        active: ``active() -> bool``, checked at each import (e.g. an environment switch);
            always active by default.
    """

    def __init__(
        self,
        targets: Iterable[str],
        callback: Callable,
        active: Optional[Callable[[], bool]] = None,
    ):
        self.targets = frozenset(targets)
        self.callback = callback
        self.active = active or (lambda: True)

    def find_spec(self, fullname, path, target=None):
        if fullname not in self.targets or not self.active():
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = CallbackLoader(spec.loader, self.callback)
        return spec


def install(finder: PostImportFinder) -> PostImportFinder:
    """Put ``finder`` first on ``sys.meta_path`` (once per finder class) and call its callback
    on the targets that are already imported. Returns the finder in use."""
    for existing in sys.meta_path:
        if type(existing) is type(finder):
            finder = existing
            break
    else:
        sys.meta_path.insert(0, finder)
    for name in sorted(finder.targets & set(sys.modules)):
        finder.callback(sys.modules[name])
    return finder
