"""``eip-al``: the active-learning loop from the command line.

Example (MACE, e2ip head, UDD exploration, GFN2-xTB labels)::

    eip-al --framework mace --model ethanol.model --train_file train.xyz \\
        --start test.xyz@0 --workdir al_run \\
        --generations 3 --dynamics udd --steps 2000 --temperature 300 \\
        --threshold 0.05 --max_frames 20 \\
        --train_command "mace_run_train --name=model --train_file={train_file} \\
            --valid_file=valid.xyz ... --head=e2ip --work_dir={gen_dir}" \\
        --model_path "{gen_dir}/model.model"

Re-running the same command after an interruption resumes after the last finished generation.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..attach.cli import HelpFormatter
from ..attach.labelled_data import frame_problem, read_structures
from ..core.udd import UDDConfig
from ..dynamics import MDSettings
from ..frameworks import make_uq_calculator
from .labelling import DEFAULT_REFERENCE, FORCES_KEY, load_reference
from .loop import SELECTION_SCORES, ActiveLearningLoop, ALSettings
from .retrain import CommandRetrainer


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="eip-al",
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
    )
    p.add_argument("--framework", choices=("mace", "nequip"), required=True, help="of --model")
    p.add_argument("--model", required=True, help="starting model trained with an evidential head")
    p.add_argument("--train_file", required=True, help="training extxyz (never modified)")
    p.add_argument("--start", required=True, help="start structure(s): FILE or FILE@INDEX")
    p.add_argument(
        "--workdir", required=True, help="one gen_NNN folder per generation; rerun to resume"
    )
    p.add_argument("--generations", type=int, default=2, help="explore-label-retrain rounds")
    p.add_argument(
        "--dynamics", choices=("udd", "md"), default="udd", help="uncertainty-driven or plain MD"
    )
    p.add_argument("--steps", type=int, default=2000, help="MD steps per generation")
    p.add_argument("--timestep", type=float, default=0.5, help="fs")
    p.add_argument("--temperature", type=float, default=300.0, help="K")
    p.add_argument(
        "--thermostat", choices=("langevin", "berendsen"), default="langevin", help="NVT"
    )
    p.add_argument("--record_every", type=int, default=10, help="MD steps between frames")
    p.add_argument("--seed", type=int, default=0, help="of the thermostat and velocities")
    p.add_argument(
        "--select_on",
        choices=SELECTION_SCORES,
        default="uncertainty",
        help="per-atom score frames are selected on: sigma_i (eV/A) or the feature distance r_i "
        "to the training atoms (dimensionless, RMS 1 over them)",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="select frames whose score exceeds this (eV/A for the uncertainty); default: none "
        "(the --max_frames highest)",
    )
    p.add_argument("--statistic", choices=("mean", "max"), default="mean", help="per frame")
    p.add_argument("--min_spacing", type=int, default=5, help="in recorded frames")
    p.add_argument("--max_frames", type=int, default=20, help="labelled per generation at most")
    defaults = UDDConfig()
    p.add_argument("--udd_A", type=float, default=defaults.A, help="bias depth, eV")
    p.add_argument("--udd_B", type=float, default=defaults.B, help="uncertainty scale, eV/A")
    p.add_argument("--udd_C", type=float, default=defaults.C, help="limiter gain")
    p.add_argument("--udd_D", type=float, default=defaults.D, help="limiter width, eV/A")
    p.add_argument(
        "--udd_form",
        choices=("squared", "linear"),
        default=defaults.form,
        help="bias A[exp(-sigma^2/(N B^2)) - 1] or the eIP code's A[exp(-sigma/(N B)) - 1]",
    )
    p.add_argument(
        "--train_command",
        required=True,
        help="training command template ({train_file} {gen_dir} {generation} {model})",
    )
    p.add_argument("--model_path", required=True, help="trained model path template")
    p.add_argument(
        "--reference",
        default=DEFAULT_REFERENCE,
        help=f"reference that labels the selected frames: {DEFAULT_REFERENCE!r} (tblite, "
        'pip install "eip-plugins[label]") or MODULE:FUNCTION, a function of no arguments '
        "returning an ASE calculator (a MODULE.py in the working directory is found)",
    )
    p.add_argument("--device", default="cpu", help="torch device of the model")
    return p


def _read_start(spec: str) -> list:
    """``FILE`` (all structures) or ``FILE@INDEX``; ValueError naming the file or index."""
    path, _, index = spec.partition("@")
    frames = read_structures(path)
    if index:
        try:
            frames = [frames[int(index)]]
        except (ValueError, IndexError):
            raise ValueError(
                f"--start {spec}: index {index!r} is not one of 0..{len(frames) - 1} "
                f"({path} holds {len(frames)} structures)"
            ) from None
    for i, atoms in enumerate(frames):
        problem = frame_problem(atoms, FORCES_KEY)
        if problem:
            raise ValueError(f"--start {spec}: structure {index or i}: {problem}")
    return frames


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        make_reference = load_reference(args.reference)
        if not Path(args.model).is_file():
            raise FileNotFoundError(f"model file {args.model} does not exist")
        start = _read_start(args.start)
        settings = ALSettings(
            generations=args.generations,
            dynamics=args.dynamics,
            md=MDSettings(
                steps=args.steps,
                timestep_fs=args.timestep,
                temperature_K=args.temperature,
                thermostat=args.thermostat,
                record_every=args.record_every,
                seed=args.seed,
            ),
            udd=UDDConfig(
                A=args.udd_A, B=args.udd_B, C=args.udd_C, D=args.udd_D, form=args.udd_form
            ),
            select_on=args.select_on,
            threshold=args.threshold,
            statistic=args.statistic,
            min_spacing=args.min_spacing,
            max_frames=args.max_frames,
        )
        loop = ActiveLearningLoop(
            workdir=args.workdir,
            model=args.model,
            train_file=args.train_file,
            start_structures=start,
            make_calculator=lambda m, udd: make_uq_calculator(args.framework, m, udd, args.device),
            retrainer=CommandRetrainer(args.train_command, args.model_path),
            make_reference=make_reference,
            settings=settings,
        )
        state = loop.run()
    except (ValueError, FileNotFoundError, RuntimeError, ImportError) as err:
        print(f"eip-al: error: {err}", file=sys.stderr)
        return 2
    for g in state["generations"]:
        print(
            f"generation {g['generation']}: mean sigma {g['mean_uncertainty']:.4f} eV/A, "
            f"entropy {g['entropy']:.3f}, labelled {g['n_labelled']} (+{g['n_added']} new), "
            f"model {g['model']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
