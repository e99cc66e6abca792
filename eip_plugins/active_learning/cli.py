"""``eip-al``: the active-learning loop from the command line.

Example (MACE, e2ip head, 4 UDD walkers per generation on a local Dask cluster of 2 workers,
GFN2-xTB labels)::

    eip-al --framework mace --model ethanol.model --train_file train.xyz \\
        --start test.xyz --walkers 4 --workers 2 --workdir al_run \\
        --generations 3 --dynamics udd --steps 2000 --temperature 300 \\
        --threshold 0.05 --max_frames 20 --holdout test.xyz \\
        --train_command "mace_run_train --name=model --train_file={train_file} \\
            --valid_file=valid.xyz ... --head=e2ip --work_dir={gen_dir}" \\
        --model_path "{gen_dir}/model.model"

After an interruption, the same command with ``--resume`` goes on where it stopped.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from contextlib import contextmanager
from functools import partial
from pathlib import Path

from ..attach.cli import HelpFormatter
from ..attach.labelled_data import frame_problem, read_structures
from ..core.udd import UDDConfig
from ..dynamics import MDSettings
from ..frameworks import make_uq_calculator
from .labelling import FORCES_KEY
from .loop import SELECTION_SCORES, STATE_FILE, ActiveLearningLoop, ALSettings
from .references import DEFAULT_REFERENCE, load_reference
from .retrain import CommandRetrainer
from .tasks import CLUSTERS, DaskTasks, InProcessTasks, open_client


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="eip-al",
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
    )
    p.add_argument("--framework", choices=("mace", "nequip"), required=True, help="of --model")
    p.add_argument("--model", required=True, help="starting model trained with an evidential head")
    p.add_argument("--train_file", required=True, help="training extxyz (never modified)")
    p.add_argument(
        "--start",
        required=True,
        help="start structure(s): FILE (every structure, used in turn by the walkers) or "
        "FILE@INDEX",
    )
    p.add_argument("--workdir", required=True, help="one gen_NNN folder per generation")
    p.add_argument(
        "--resume",
        action="store_true",
        help="go on with the run in --workdir: finished generations, walkers and labels are kept "
        "(without it a --workdir that holds a run is refused)",
    )
    p.add_argument("--generations", type=int, default=2, help="explore-label-retrain rounds")
    p.add_argument("--walkers", type=int, default=1, help="MD/UDD runs per generation (Dask tasks)")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="local Dask worker processes (default: min(--walkers, CPU cores)); with --cluster, "
        "batch jobs; 0 runs everything in this process without Dask",
    )
    p.add_argument(
        "--threads_per_worker", type=int, default=1, help="torch threads of each local worker"
    )
    p.add_argument(
        "--scheduler",
        default=None,
        help="address of a running Dask scheduler (tcp://host:8786) to run the tasks on",
    )
    p.add_argument(
        "--scheduler_timeout", type=float, default=10.0, help="s a --scheduler may take to answer"
    )
    p.add_argument(
        "--cluster",
        choices=sorted(CLUSTERS),
        default="local",
        help="local: a LocalCluster on this machine; slurm/pbs/sge/lsf: dask-jobqueue, job "
        "settings from ~/.config/dask/jobqueue.yaml",
    )
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
    p.add_argument(
        "--threshold_max",
        type=float,
        default=None,
        help="leave out frames whose score exceeds this: far outside the training data, often "
        "unphysical (DP-GEN's upper trust level); default: none",
    )
    p.add_argument("--statistic", choices=("mean", "max"), default="mean", help="per frame")
    p.add_argument("--min_spacing", type=int, default=5, help="in recorded frames of a walker")
    p.add_argument(
        "--max_frames", type=int, default=20, help="labelled per generation at most (all walkers)"
    )
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
        help="who labels the selected frames: 'tblite' (GFN2-xTB, pip install "
        "\"eip-plugins[label]\"), 'pyscf' (DFT of molecules, see --pyscf_*), 'external' (the "
        "loop writes gen_NNN/to_label.xyz and stops; put gen_NNN/labelled.xyz beside it and "
        "rerun with --resume) or MODULE:FUNCTION, a function of no arguments returning an ASE "
        "calculator (a MODULE.py in the working directory is found)",
    )
    p.add_argument("--tblite_method", default="GFN2-xTB", help="method of --reference tblite")
    p.add_argument("--pyscf_method", default="PBE", help="functional (or HF) of --reference pyscf")
    p.add_argument("--pyscf_basis", default="def2-svp", help="basis set of --reference pyscf")
    p.add_argument("--pyscf_charge", type=int, default=0, help="total charge, e")
    p.add_argument(
        "--holdout",
        default=None,
        help="labelled extxyz (REF_forces) on which every generation's model is scored: force "
        "MAE/RMSE and sigma by generation in al_summary.json and al_summary.png",
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


def _check_workdir(workdir: Path, resume: bool) -> None:
    """A --workdir that holds a run is only reused with --resume (never overwritten)."""
    if resume or not workdir.exists():
        return
    if not workdir.is_dir():
        raise ValueError(f"--workdir {workdir}: is a file, not a folder")
    if (workdir / STATE_FILE).exists() or any(workdir.glob("gen_*")):
        raise ValueError(
            f"--workdir {workdir} holds an active-learning run: add --resume to go on with it, "
            "or choose another --workdir"
        )


def _read_holdout(path: str | None) -> list | None:
    if path is None:
        return None
    frames = read_structures(path)
    for i, atoms in enumerate(frames):
        if FORCES_KEY not in atoms.arrays:
            raise ValueError(f"--holdout {path}: structure {i} has no forces under {FORCES_KEY!r}")
        problem = frame_problem(atoms, FORCES_KEY)
        if problem:
            raise ValueError(f"--holdout {path}: structure {i}: {problem}")
    return frames


@contextmanager
def _tasks(args):
    """Dask tasks on the cluster the options name, or this process (--workers 0)."""
    if args.workers == 0 and not args.scheduler:
        yield InProcessTasks()
        return
    workers = args.workers or max(1, min(args.walkers, os.cpu_count() or 1))
    with open_client(
        args.scheduler, args.cluster, workers, args.threads_per_worker, args.scheduler_timeout
    ) as client:
        yield DaskTasks(client)


def _settings(args) -> ALSettings:
    return ALSettings(
        generations=args.generations,
        walkers=args.walkers,
        dynamics=args.dynamics,
        md=MDSettings(
            steps=args.steps,
            timestep_fs=args.timestep,
            temperature_K=args.temperature,
            thermostat=args.thermostat,
            record_every=args.record_every,
            seed=args.seed,
        ),
        udd=UDDConfig(A=args.udd_A, B=args.udd_B, C=args.udd_C, D=args.udd_D, form=args.udd_form),
        select_on=args.select_on,
        threshold=args.threshold,
        threshold_max=args.threshold_max,
        statistic=args.statistic,
        min_spacing=args.min_spacing,
        max_frames=args.max_frames,
    )


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("distributed").setLevel(logging.WARNING)
    try:
        pyscf = dict(method=args.pyscf_method, basis=args.pyscf_basis, charge=args.pyscf_charge)
        make_reference = load_reference(args.reference, args.tblite_method, pyscf)
        if args.workers is not None and args.workers < 0:
            raise ValueError(f"--workers {args.workers}: must be >= 0")
        if not Path(args.model).is_file():
            raise FileNotFoundError(f"model file {args.model} does not exist")
        _check_workdir(Path(args.workdir), args.resume)
        start = _read_start(args.start)
        holdout = _read_holdout(args.holdout)
        settings = _settings(args)
        loop = ActiveLearningLoop(
            workdir=args.workdir,
            model=args.model,
            train_file=args.train_file,
            start_structures=start,
            make_calculator=partial(make_uq_calculator, args.framework, device=args.device),
            retrainer=CommandRetrainer(args.train_command, args.model_path),
            make_reference=make_reference,
            settings=settings,
            holdout=holdout,
        )  # every input is checked before a cluster starts
        with _tasks(args) as tasks:
            loop.tasks = tasks
            state = loop.run()
    except (ValueError, FileNotFoundError, RuntimeError, ImportError, OSError) as err:
        print(f"eip-al: error: {err}", file=sys.stderr)
        return 2
    for g in state["generations"]:
        holdout_text = (
            f", held-out force MAE {g['holdout']['force_mae']:.4f} eV/A" if "holdout" in g else ""
        )
        print(
            f"generation {g['generation']}: {g['n_walkers']} walker(s), mean sigma "
            f"{g['mean_uncertainty']:.4f} eV/A, entropy {g['entropy']:.3f}, labelled "
            f"{g['n_labelled']} (+{g['n_added']} new){holdout_text}, model {g['model']}"
        )
    waiting = state.get("waiting")
    if waiting:
        print(
            f"generation {waiting['generation']} waits for labels: label the {waiting['frames']} "
            f"frames of {waiting['to_label']} with your reference, write them (REF_energy in "
            f"info, REF_forces in arrays, atoms not moved) to {waiting['labelled']}, and run the "
            "same command with --resume"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
