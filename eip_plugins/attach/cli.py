"""``eip-attach``: add an evidential head to an already trained model (backbone frozen).

Examples::

    eip-attach mace --model plain.model --train_file train.xyz --valid_file valid.xyz \\
        --head e2ip --output plain_e2ip.model
    eip-attach nequip --model outputs/plain/best.ckpt --train_file train.xyz \\
        --valid_file valid.xyz --head e2ip --output plain_e2ip.ckpt

The input model file is never modified; the report compares before/after on the validation file.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from ..calibration import DEFAULT_NEIGHBOURS, RECALIBRATION_CHOICES, CalibrationSettings
from ..core.config import GEOMETRIC_FEATURES, HEAD_KINDS
from ..core.feature_density import DEFAULT_FORCE_PRIOR, DEFAULT_POWER, DEFAULT_STRENGTH
from ..frameworks import require_framework
from .labelled_data import AttachError


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none (required options, None)."""

    def _get_help_string(self, action):
        if action.default is None or action.required:
            return action.help
        return super()._get_help_string(action)


def _common_arguments(p: argparse.ArgumentParser, model_help: str, output_help: str) -> None:
    p.add_argument("--model", required=True, help=model_help + " (read only, never modified)")
    p.add_argument("--train_file", required=True, help="labelled structures (extxyz, ...)")
    p.add_argument("--valid_file", default=None, help="for early stopping and the report")
    p.add_argument("--output", required=True, help=output_help + " (not --model)")
    p.add_argument("--head", choices=HEAD_KINDS, default="e2ip", help="the head to train")
    p.add_argument("--replace", action="store_true", help="replace an existing head")
    p.add_argument("--forces_key", default="REF_forces", help="atoms.arrays key of the forces")
    add_energy_key_argument(p)
    p.add_argument("--max_epochs", type=int, default=200, help="head training epochs at most")
    p.add_argument(
        "--patience", type=int, default=50, help="epochs without a better validation NLL"
    )
    p.add_argument("--lr", type=float, default=5e-3, help="Adam learning rate of the head")
    p.add_argument("--batch_size", type=int, default=16, help="structures per batch")
    p.add_argument("--seed", type=int, default=0, help="head initialisation and shuffling")
    p.add_argument(
        "--max_atoms_in_memory",
        type=int,
        default=2_000_000,
        help="cached features of more atoms than this are streamed from a temporary folder",
    )
    p.add_argument("--eip_hidden", type=int, default=None, help="head width")
    p.add_argument("--eip_lambda", type=float, default=None, help="evidence regulariser weight")
    p.add_argument("--eip_quantile", type=float, default=None, help="eip quantile q in (0, 1)")
    p.add_argument(
        "--eip_geometric_features",
        choices=GEOMETRIC_FEATURES,
        default=None,
        help="auto (default): on a scalar-only model the head builds vector (1o) and l=2 "
        "features from the neighbour list and the model's invariant features; always: also on "
        "top of the model's own 1o features; never: the model's features only",
    )
    p.add_argument(
        "--eip_geometric_channels",
        type=int,
        default=None,
        help="number of geometric 1o and of 2e channels (default 16)",
    )
    p.add_argument("--report", default=None, help="write the before/after report (JSON) here")
    add_calibration_arguments(p)


def add_energy_key_argument(p: argparse.ArgumentParser) -> None:
    """``--energy_key``, accepted as in ``mace_run_train`` and not used (forces only)."""
    p.add_argument(
        "--energy_key",
        default=None,
        help="accepted as in mace_run_train, not used: the head is fitted to forces only",
    )


def add_calibration_arguments(p: argparse.ArgumentParser) -> None:
    """``--no_density``, ``--density_strength``, ``--density_power``, ``--density_neighbours``,
    ``--force_prior``, ``--no_output_range``, ``--recalibrate`` (shared with ``eip-calibrate``)."""
    p.add_argument(
        "--no_density",
        action="store_true",
        help="do not fit the per-element feature statistics (no density-aware evidence, "
        "forces_feature_distance stays 0)",
    )
    p.add_argument(
        "--density_strength",
        type=float,
        default=DEFAULT_STRENGTH,
        help="a of the evidence factor 1 / (1 + a r^(2p)), r the feature distance (RMS 1 over "
        "the training atoms); 0 keeps the evidence as trained",
    )
    p.add_argument(
        "--density_power",
        type=float,
        default=DEFAULT_POWER,
        help="p of the evidence factor 1 / (1 + a r^(2p))",
    )
    p.add_argument(
        "--density_neighbours",
        type=int,
        default=None,
        metavar="M",
        help="also measure the distance to the nearest training atoms of the element (a "
        "random sample of up to M per element is stored in the model; r^2 is then the mean of "
        f"the Gaussian and the neighbour distance); default {DEFAULT_NEIGHBOURS} (0 without "
        "the feature statistics); 0: the Gaussian distance only",
    )
    p.add_argument(
        "--force_prior",
        type=float,
        default=DEFAULT_FORCE_PRIOR,
        metavar="K",
        help="fit each element's RMS reference force component on --train_file: far out of "
        "distribution sigma levels off at K times it instead of growing without end (default "
        f"{DEFAULT_FORCE_PRIOR:g}; 0: unbounded)",
    )
    p.add_argument(
        "--no_output_range",
        action="store_true",
        help="do not clamp the head's learned outputs to their range over the training atoms "
        "(the head then extrapolates them out of distribution)",
    )
    p.add_argument(
        "--recalibrate",
        choices=RECALIBRATION_CHOICES,
        default="nll",
        help="fit the scale of the predictive distribution on --valid_file by its NLL or CE",
    )


def calibration_settings(args) -> CalibrationSettings:
    return CalibrationSettings(
        density=not args.no_density,
        strength=args.density_strength,
        power=args.density_power,
        recalibrate=args.recalibrate,
        output_range=not args.no_output_range,
        neighbours=args.density_neighbours,
        force_prior=args.force_prior,
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eip-attach", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="framework", required=True)
    m = sub.add_parser("mace", help="a MACE '*.model' file", formatter_class=HelpFormatter)
    _common_arguments(
        m,
        "a MACE *.model (plain, multi-head or foundation-style local file; not *_compiled.model)",
        "the *.model to write",
    )
    m.add_argument("--mace_head", default=None, help="head of a multi-head MACE model")
    n = sub.add_parser(
        "nequip",
        help="a NequIP checkpoint ('*.ckpt') or package ('*.nequip.zip'); writes a checkpoint",
        formatter_class=HelpFormatter,
    )
    _common_arguments(
        n,
        "a NequIP checkpoint (*.ckpt) or nequip-package file (*.nequip.zip); not a compiled *.pt2",
        "the checkpoint (*.ckpt) to write; nequip-package / nequip-compile --target ase_uq it",
    )
    n.add_argument(
        "--feature_layer",
        type=_feature_layer,
        default=None,
        help="convnet layer whose node features feed the head (an index, e.g. -2), or 'all'. "
        "Default: all (every layer's features, concatenated, as the head reads MACE's); "
        "without 1o features the head adds geometric ones built from the neighbour list",
    )
    return p


def _feature_layer(text: str):
    """``--feature_layer``: a convnet layer index or ``all``."""
    if text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid value {text!r}: a convnet layer index (e.g. -2) or 'all'"
        ) from None


def _head_options(args) -> dict:
    options = {}
    for flag, key in (
        ("eip_hidden", "hidden"),
        ("eip_lambda", "lam"),
        ("eip_quantile", "quantile"),
        ("eip_geometric_features", "geometric_features"),
        ("eip_geometric_channels", "geometric_channels"),
    ):
        value = getattr(args, flag)
        if value is not None:
            options[key] = value
    return options


def _attach(args) -> dict:
    require_framework(args.framework)
    common = {
        "head": args.head,
        "valid_file": args.valid_file,
        "replace": args.replace,
        "forces_key": args.forces_key,
        "head_options": _head_options(args),
        "max_epochs": args.max_epochs,
        "patience": args.patience,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "max_atoms_in_memory": args.max_atoms_in_memory,
        "progress": sys.stderr.isatty(),
        "calibration": calibration_settings(args),
    }
    if args.framework == "mace":
        from ..mace.attach import attach_head

        return attach_head(
            args.model, args.train_file, args.output, mace_head=args.mace_head, **common
        )
    from ..nequip.attach import attach_head

    return attach_head(
        args.model, args.train_file, args.output, feature_layer=args.feature_layer, **common
    )


def run_command(prog: str, args, work, show) -> int:
    """Run ``work(args) -> report`` with one-line errors (exit 2), then ``show(report)``, name the
    written file and write ``--report`` (shared by ``eip-attach`` and ``eip-calibrate``)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if getattr(args, "energy_key", None):
        logging.info(f"--energy_key={args.energy_key} is not used: the head needs forces only")
    try:
        report = work(args)
    except (AttachError, ValueError, FileNotFoundError, ImportError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    show(report)
    print(f"  wrote {report['output']}")
    if args.report:
        with open(args.report, "w") as fh:
            json.dump(report, fh, indent=2)
    return 0


def _show(report: dict) -> None:
    before, after = report["before"], report["after"]
    print(
        f"head {report['head']} trained for {report['epochs_run']} epochs "
        f"(best {report['best_epoch']}) on {report['features']}, "
        f"evaluated on {report['evaluated_on']}:"
    )
    print(f"  force MAE  before {before['force_mae']:.4f}  after {after['force_mae']:.4f} eV/A")
    print(
        f"  Spearman {after['spearman']:.3f}  ROC-AUC {after['roc_auc']:.3f}  "
        f"NLL {after['nll']:.3f}  CE {after['ce']:.3f}"
    )
    calibrated = report.get("calibration")
    if calibrated and "before" in calibrated:
        b, a = calibrated["before"], calibrated["after"]
        print(
            f"  calibration: c = {calibrated['variance_scale']:.4g}, CE {b['ce']:.3f} -> "
            f"{a['ce']:.3f}, Spearman {b['spearman']:.3f} -> {a['spearman']:.3f} "
            f"(feature statistics {'on' if 'statistics' in calibrated else 'off'})"
        )


def main(argv=None) -> int:
    return run_command("eip-attach", build_parser().parse_args(argv), _attach, _show)


if __name__ == "__main__":
    sys.exit(main())
