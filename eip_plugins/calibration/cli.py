"""``eip-calibrate``: (re)fit the feature statistics, the output range and the recalibration
scale of a model that already has an evidential head (trained with ``--head`` /
``config_with_eip`` or by ``eip-attach``). Backbone and head weights are not changed.

Examples::

    eip-calibrate mace --model ethanol.model --train_file train.xyz --valid_file valid.xyz \\
        --output ethanol_calibrated.model
    eip-calibrate nequip --model outputs/run/best.ckpt --train_file train.xyz \\
        --valid_file valid.xyz --output best_calibrated.ckpt

The input model file is only read; the output is verified (same energies and forces as the
input) before it is renamed into place.
"""

from __future__ import annotations

import argparse
import sys

from ..attach.cli import (
    HelpFormatter,
    add_calibration_arguments,
    add_energy_key_argument,
    calibration_settings,
    run_command,
)
from ..frameworks import require_framework


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eip-calibrate", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="framework", required=True)
    for name, help_text in (
        ("mace", "a MACE '*.model' with a head; writes a '*.model'"),
        ("nequip", "a NequIP checkpoint ('*.ckpt') with a head; writes a checkpoint"),
    ):
        s = sub.add_parser(name, help=help_text, formatter_class=HelpFormatter)
        s.add_argument("--model", required=True, help=f"{help_text.split(';')[0]} (read only)")
        s.add_argument(
            "--train_file", required=True, help="the structures the model was trained on"
        )
        s.add_argument(
            "--valid_file",
            default=None,
            help="held-out labelled structures for the recalibration (without: c = 1)",
        )
        s.add_argument("--output", required=True, help="where to write (not --model)")
        s.add_argument("--forces_key", default="REF_forces", help="atoms.arrays key of forces")
        add_energy_key_argument(s)
        s.add_argument("--batch_size", type=int, default=16, help="structures per batch")
        s.add_argument("--report", default=None, help="write the report (JSON) here")
        add_calibration_arguments(s)
        if name == "mace":
            s.add_argument("--mace_head", default=None, help="head of a multi-head MACE model")
    return p


def _calibrate(args) -> dict:
    require_framework(args.framework)
    common = {
        "forces_key": args.forces_key,
        "batch_size": args.batch_size,
        "settings": calibration_settings(args),
    }
    if args.framework == "mace":
        from ..mace.calibration import calibrate_model

        return calibrate_model(
            args.model,
            args.train_file,
            args.valid_file,
            args.output,
            mace_head=args.mace_head,
            **common,
        )
    from ..nequip.calibration import calibrate_checkpoint

    return calibrate_checkpoint(args.model, args.train_file, args.valid_file, args.output, **common)


def _show(report: dict) -> None:
    stats = report.get("statistics")
    print(
        f"{report['head']} head: feature statistics "
        + (f"fitted on {sum(stats['atoms_per_species'])} atoms" if stats else "off")
        + f", variance scale c = {report['variance_scale']:.4g}"
    )
    if "before" in report:
        b, a = report["before"], report["after"]
        print(
            f"  validation: CE {b['ce']:.3f} -> {a['ce']:.3f}, NLL {b['nll']:.3f} -> "
            f"{a['nll']:.3f}, Spearman {b['spearman']:.3f} -> {a['spearman']:.3f}, "
            f"ROC-AUC {b['roc_auc']:.3f} -> {a['roc_auc']:.3f}"
        )


def main(argv=None) -> int:
    return run_command("eip-calibrate", build_parser().parse_args(argv), _calibrate, _show)


if __name__ == "__main__":
    sys.exit(main())
