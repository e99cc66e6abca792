"""``nequip-compile`` and ``nequip-package build`` given a bad model file end with one line
instead of a torch traceback.

NequIP's scripts read their input with ``torch.load`` deep inside ``load_saved_model``: a corrupt
file ends in ``ValueError: invalid literal for int() with base 10`` under 30 lines of traceback,
an empty one in ``EOFError: Ran out of input``, a checkpoint whose training data was moved in
Hydra's ``InstantiationException`` that no longer names the file. On ``import nequip`` (the
``nequip.extension`` entry point) this module puts a
:class:`~eip_plugins.post_import.PostImportFinder` on ``sys.meta_path`` that wraps
``nequip.scripts.compile`` and ``nequip.scripts.package`` once they are imported, before the
console scripts take their ``main``:

- the input file is checked before torch reads it (missing, empty, not a zip archive: a
  truncated or foreign file; an already compiled ``*.nequip.pt2``);
- a file that still cannot be loaded (a truncated archive, another framework's model) is
  named with the loader's own reason;
- a checkpoint whose training data file is gone (both scripts read an example structure from
  it) names that file;
- ``nequip-compile --target ase_uq`` on a model without an evidential head says so and what to
  do.

Each ends the script with ``nequip-compile: error: …`` (``nequip-package: error: …``) and exit
status 1. Everything else (compiling, packaging, their options) is NequIP's, unchanged.
``EIP_FULL_ERRORS=1`` keeps the traceback; ``EIP_PLUGINS_DISABLE=1`` leaves both untouched.
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

#: the wrapped modules and the console scripts they are
PROGRAMS = {"nequip.scripts.compile": "nequip-compile", "nequip.scripts.package": "nequip-package"}
WHAT = "a NequIP checkpoint or package file"
_REMOTE = "nequip.net:"  # a model of nequip.net, fetched by NequIP itself
#: why each script reads the checkpoint's training data
_READS_DATA = {
    "nequip-compile": "--mode aotinductor reads an example structure from them",
    "nequip-package": "nequip-package stores an example structure from them in the package",
}


class CompileInputError(ValueError):
    """A problem with ``nequip-compile``'s input, reported as one line."""


def _has_head(model) -> bool:
    from .head_module import has_evidential_head

    modules = model.values() if isinstance(model, dict) else [model]
    return any(has_evidential_head(module) for module in modules)


def check_input(input_path, prog: str = "nequip-compile") -> None:
    """Raise :class:`CompileInputError` unless ``input_path`` can be a checkpoint or package
    (exists, not empty, a zip archive, not already compiled; a ``nequip.net:`` model passes)."""
    if str(input_path).endswith((".pt2", ".nequip.pth")):
        wanted = (
            "checkpoint (*.ckpt)"
            if prog == "nequip-package"
            else ("checkpoint (*.ckpt) or package (*.nequip.zip)")
        )
        raise CompileInputError(
            f"{input_path} is already a compiled model: {prog} needs the {wanted} it was "
            "compiled from"
        )
    if not str(input_path).startswith(_REMOTE):
        try:
            check_model_archive(input_path, WHAT)
        except (FileNotFoundError, ValueError) as err:
            raise CompileInputError(str(err)) from None


def checked_loader(load_saved_model, target: Optional[str], prog: str = "nequip-compile"):
    """``load_saved_model`` that checks the file first (:func:`check_input`) and turns a failed
    load into a :class:`CompileInputError` naming the file (and, for ``--target ase_uq``,
    refuses a model without a head)."""

    @functools.wraps(load_saved_model)
    def load(input_path, *args, **kwargs):
        check_input(input_path, prog)
        try:
            loaded = load_saved_model(input_path, *args, **kwargs)
        except Exception as err:  # noqa: BLE001 - any failure to load is the input's problem
            missing = missing_file(err)
            if missing is not None:
                raise CompileInputError(
                    f"{input_path} could not be loaded: it refers to {missing}, which does not "
                    "exist (a checkpoint names its training data by the paths it was trained "
                    f"with, and {_READS_DATA.get(prog, 'the script reads them')}: put the file "
                    "back at that path)"
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


def _package_build_input(argv) -> Optional[str]:
    """The checkpoint of ``nequip-package build CKPT OUT [--mode M]``, else ``None``."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("command", nargs="?")
    parser.add_argument("ckpt_path", nargs="?")
    parser.add_argument("--mode", default=None)
    known, _ = parser.parse_known_args(argv)
    return known.ckpt_path if known.command == "build" else None


def check_package_input(ckpt_path) -> None:
    """What ``nequip-package build`` does first, ``torch.load`` of its checkpoint, checked: one
    :class:`CompileInputError` line for a file that is not a NequIP checkpoint."""
    check_input(ckpt_path, "nequip-package")
    import torch

    try:
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any failure to load is the input's problem
        raise CompileInputError(
            f"{ckpt_path} could not be loaded as a NequIP checkpoint ({type(err).__name__}: "
            f"{error_summary(err)})"
        ) from err
    if not isinstance(checkpoint, dict) or "hyper_parameters" not in checkpoint:
        raise CompileInputError(
            f"{ckpt_path} is not a NequIP checkpoint (no 'hyper_parameters'): nequip-package "
            "build needs the *.ckpt file of a nequip-train run"
        )


def wrap_main(module) -> None:
    """Wrap ``module.main`` (``nequip.scripts.compile`` or ``.package``) so that input errors end
    in one line."""
    main = module.main
    if getattr(main, "__eip_wrapped__", False):
        return
    prog = PROGRAMS.get(module.__name__, "nequip-compile")
    load_saved_model = module.load_saved_model

    @functools.wraps(main)
    def main_with_one_line_errors(args=None):
        argv = sys.argv[1:] if args is None else list(args)
        module.load_saved_model = checked_loader(load_saved_model, _target_of(argv), prog)
        try:
            if prog == "nequip-package":
                ckpt_path = _package_build_input(argv)
                if ckpt_path is not None:
                    check_package_input(ckpt_path)
            return main(args)
        except CompileInputError as err:
            if switched_on(FULL_ERRORS_ENV):
                raise
            print(f"{prog}: error: {err}", file=sys.stderr)
            raise SystemExit(1) from None
        finally:
            module.load_saved_model = load_saved_model

    main_with_one_line_errors.__eip_wrapped__ = True
    module.main = main_with_one_line_errors


class CompileHookFinder(PostImportFinder):
    """Wraps ``nequip.scripts.compile`` and ``nequip.scripts.package`` once imported
    (:func:`wrap_main`)."""

    def __init__(self):
        super().__init__(list(PROGRAMS), wrap_main, active=lambda: not plugins_disabled())


def install() -> None:
    """Called on ``import nequip``; never fails the import."""
    if plugins_disabled():
        return
    try:
        install_finder(CompileHookFinder())
    except Exception as err:  # noqa: BLE001 - a broken plugin must not break nequip
        print(f"eip-plugins: nequip-compile hook not installed ({err!r})", file=sys.stderr)
