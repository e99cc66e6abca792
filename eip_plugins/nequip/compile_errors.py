"""``nequip-compile`` given a bad model file ends with one line instead of a torch traceback.

NequIP's ``nequip-compile`` reads its input with ``torch.load`` deep inside
``load_saved_model``: a corrupt file ends in ``ValueError: invalid literal for int() with base
10`` under 30 lines of traceback, an empty one in ``EOFError: Ran out of input``. On
``import nequip`` (the ``nequip.extension`` entry point) this module puts a
:class:`~eip_plugins.post_import.PostImportFinder` on ``sys.meta_path`` that wraps
``nequip.scripts.compile`` once it is imported, before the console script takes its ``main``:

- the input file is checked before torch reads it (missing, empty, not a zip archive: a
  truncated or foreign file; an already compiled ``*.nequip.pt2``);
- a file that still cannot be loaded (a truncated archive, another framework's model) is
  named with the loader's own reason;
- ``--target ase_uq`` on a model without an evidential head says so and what to do.

Each ends ``nequip-compile`` with ``nequip-compile: error: …`` and exit status 1. Everything
else (the compile itself, its options) is NequIP's, unchanged. ``EIP_FULL_ERRORS=1`` keeps the
traceback; ``EIP_PLUGINS_DISABLE=1`` leaves ``nequip-compile`` untouched.
"""

from __future__ import annotations

import argparse
import functools
import sys
from typing import Optional

from ..model_files import check_model_archive, error_summary, missing_file
from ..post_import import PostImportFinder
from ..post_import import install as install_finder
from ..switches import FULL_ERRORS_ENV, plugins_disabled, switched_on

TARGET_MODULE = "nequip.scripts.compile"
PROG = "nequip-compile"
WHAT = "a NequIP checkpoint or package file"
_REMOTE = "nequip.net:"  # a model of nequip.net, fetched by NequIP itself


class CompileInputError(ValueError):
    """A problem with ``nequip-compile``'s input, reported as one line."""


def _has_head(model) -> bool:
    from .head_module import has_evidential_head

    modules = model.values() if isinstance(model, dict) else [model]
    return any(has_evidential_head(module) for module in modules)


def checked_loader(load_saved_model, target: Optional[str]):
    """``load_saved_model`` that checks the file first and turns a failed load into a
    :class:`CompileInputError` naming the file (and, for ``--target ase_uq``, refuses a model
    without a head)."""

    @functools.wraps(load_saved_model)
    def load(input_path, *args, **kwargs):
        remote = str(input_path).startswith(_REMOTE)
        if str(input_path).endswith((".pt2", ".nequip.pth")):
            raise CompileInputError(
                f"{input_path} is already a compiled model: nequip-compile needs the checkpoint "
                "(*.ckpt) or package (*.nequip.zip) it was compiled from"
            )
        if not remote:
            try:
                check_model_archive(input_path, WHAT)
            except (FileNotFoundError, ValueError) as err:
                raise CompileInputError(str(err)) from None
        try:
            loaded = load_saved_model(input_path, *args, **kwargs)
        except Exception as err:  # noqa: BLE001 - any failure to load is the input's problem
            missing = missing_file(err)
            if missing is not None:
                raise CompileInputError(
                    f"{input_path} could not be loaded: it refers to {missing}, which does not "
                    "exist (a checkpoint names its training data by the paths it was trained "
                    "with, and --mode aotinductor reads an example structure from them: put the "
                    "file back at that path)"
                ) from err
            raise CompileInputError(
                f"{input_path} could not be loaded as {WHAT} ({type(err).__name__}: "
                f"{error_summary(err)})"
            ) from err
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        if target == "ase_uq" and not _has_head(model):
            raise CompileInputError(
                f"{input_path} is a plain NequIP model without an evidential head: "
                "--target ase_uq needs one (give it one with `eip-attach nequip`, or compile "
                "it with --target ase)"
            )
        return loaded

    return load


def _target_of(argv) -> Optional[str]:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--target", default=None)
    known, _ = parser.parse_known_args(argv)
    return known.target


def wrap_main(module) -> None:
    """Wrap ``module.main`` (``nequip.scripts.compile``) so that input errors end in one line."""
    main = module.main
    if getattr(main, "__eip_wrapped__", False):
        return
    load_saved_model = module.load_saved_model

    @functools.wraps(main)
    def main_with_one_line_errors(args=None):
        argv = sys.argv[1:] if args is None else list(args)
        module.load_saved_model = checked_loader(load_saved_model, _target_of(argv))
        try:
            return main(args)
        except CompileInputError as err:
            if switched_on(FULL_ERRORS_ENV):
                raise
            print(f"{PROG}: error: {err}", file=sys.stderr)
            raise SystemExit(1) from None
        finally:
            module.load_saved_model = load_saved_model

    main_with_one_line_errors.__eip_wrapped__ = True
    module.main = main_with_one_line_errors


class CompileHookFinder(PostImportFinder):
    """Wraps ``nequip.scripts.compile`` once it is imported (:func:`wrap_main`)."""

    def __init__(self):
        super().__init__([TARGET_MODULE], wrap_main, active=lambda: not plugins_disabled())


def install() -> None:
    """Called on ``import nequip``; never fails the import."""
    if plugins_disabled():
        return
    try:
        install_finder(CompileHookFinder())
    except Exception as err:  # noqa: BLE001 - a broken plugin must not break nequip
        print(f"eip-plugins: nequip-compile hook not installed ({err!r})", file=sys.stderr)
