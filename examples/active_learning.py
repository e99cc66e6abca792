"""Active learning measured: does ``eip-al`` lower the held-out force error, and what do parallel
walkers cost?

1. trains a *seed* MACE e2ip model on the first ``--seed_frames`` frames of the shipped 300 K
   ethanol training set (``mace_run_train --head=e2ip``);
2. runs ``eip-al`` from it: ``--walkers`` UDD walkers per generation on a local Dask cluster,
   GFN2-xTB labels (tblite; the shipped data are GFN2-xTB too), retraining from scratch through
   ``mace_run_train`` on the growing training set, each generation's model scored on the
   held-out 1200 K and 300 K test sets;
3. times one generation with 1, 2 and 4 walkers (same steps per walker, ``--workers`` local
   workers, no retraining), exploration and labelling only.

Outputs go to ``--out`` (default ``al_demo_out/``): ``summary.md``, ``summary.json``, the
``eip-al`` work folder (``al_run/``, with ``al_summary.png``) and the timing runs. Example::

    python -m examples.active_learning --out al_demo_out
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import ase.io

from examples.demo import DATA, _z

BIN = Path(sys.executable).parent


def mace_flags(epochs: int, seed: int) -> list[str]:
    """The MACE training flags of the seed model and of every generation (plain MACE + head)."""
    e0s = json.loads((DATA / "isolated_atom_energies.json").read_text())
    e0s_arg = "{" + ", ".join(f"{_z(s)}: {e}" for s, e in e0s.items()) + "}"
    return [
        "--head=e2ip",
        f"--valid_file={DATA / 'ethanol_valid.xyz'}",
        "--energy_key=REF_energy",
        "--forces_key=REF_forces",
        f"--E0s={e0s_arg}",
        "--model=MACE",
        "--hidden_irreps=16x0e + 16x1o",
        "--r_max=4.0",
        "--num_interactions=2",
        "--correlation=2",
        "--max_L=1",
        "--batch_size=5",
        "--valid_batch_size=25",
        f"--max_num_epochs={epochs}",
        "--lr=0.01",
        "--ema",
        "--default_dtype=float64",
        "--device=cpu",
        f"--seed={seed}",
    ]


def run(cmd: list, log: Path) -> float:
    """Run ``cmd`` with its output in ``log``; wall seconds."""
    t0 = time.perf_counter()
    with open(log, "w") as handle:
        proc = subprocess.run([str(c) for c in cmd], stdout=handle, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-15:])
        raise SystemExit(f"{cmd[0]} failed (exit {proc.returncode}); {log}:\n{tail}")
    return time.perf_counter() - t0


def train_seed_model(out: Path, frames: int, epochs: int) -> Path:
    seed_train = out / "seed_train.xyz"
    ase.io.write(seed_train, ase.io.read(DATA / "ethanol_train.xyz", f":{frames}"), "extxyz")
    folder = out / "seed_model"
    cmd = [
        BIN / "mace_run_train", "--name=model", f"--train_file={seed_train}",
        *mace_flags(epochs, seed=1), f"--model_dir={folder}",
        f"--checkpoints_dir={folder / 'checkpoints'}", f"--results_dir={folder / 'results'}",
        f"--log_dir={folder / 'logs'}",
    ]  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    seconds = run(cmd, folder / "train.log")
    print(f"seed model: {frames} frames, {epochs} epochs, {seconds:.0f} s", flush=True)
    return folder / "model.model"


def eip_al(model: Path, workdir: Path, args, walkers: int, generations: int, train: str):
    train_command = " ".join(
        shlex.quote(str(a))
        for a in [
            BIN / "mace_run_train", "--name=model", "--train_file={train_file}",
            *mace_flags(args.epochs, seed=1), "--model_dir={gen_dir}",
            "--checkpoints_dir={gen_dir}/checkpoints", "--results_dir={gen_dir}/results",
            "--log_dir={gen_dir}/logs",
        ]
    ) if train == "mace" else f"cp {shlex.quote(str(model))} {{gen_dir}}/model.model"  # fmt: skip
    return [
        BIN / "eip-al", "--framework", "mace", "--model", model,
        "--train_file", args.out / "seed_train.xyz", "--start", DATA / "ethanol_test_300K.xyz",
        "--walkers", walkers, "--workers", args.workers, "--workdir", workdir,
        "--generations", generations, "--dynamics", "udd", "--temperature", args.temperature,
        "--steps", args.steps, "--record_every", 10, "--max_frames", args.max_frames,
        "--min_spacing", 3, "--train_command", train_command,
        *(["--threshold_max", args.threshold_max] if args.threshold_max is not None else []),
        "--model_path", "{gen_dir}/model.model",
        *(["--holdout", args.out / "holdout.xyz"] if train == "mace" else []),
    ]  # fmt: skip


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("al_demo_out"))
    p.add_argument("--seed_frames", type=int, default=30)
    p.add_argument("--epochs", type=int, default=80, help="of the seed model and every retraining")
    p.add_argument("--generations", type=int, default=4)
    p.add_argument("--walkers", type=int, default=4)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--steps", type=int, default=500, help="MD steps per walker")
    p.add_argument("--temperature", type=float, default=300.0, help="K, of the UDD walkers")
    p.add_argument(
        "--threshold_max",
        type=float,
        default=1.0,
        help="eV/A: frames of higher mean sigma are not labelled (eip-al --threshold_max; the "
        "600 K run without it labelled broken molecules); a negative value: no bound",
    )
    p.add_argument("--max_frames", type=int, default=12, help="labelled per generation")
    p.add_argument("--quick", action="store_true", help="tiny run (minutes) to check the script")
    p.add_argument(
        "--only",
        choices=("loop", "timing"),
        default=None,
        help="run only the active-learning loop, or only the walker timing (on an idle machine; "
        "the seed model is reused); the summary is written once both have run",
    )
    args = p.parse_args(argv)
    if args.threshold_max < 0:
        args.threshold_max = None
    if args.quick:
        args.seed_frames, args.epochs, args.generations, args.steps = 10, 2, 1, 20
    args.out.mkdir(parents=True, exist_ok=True)
    # held-out: GFN2-xTB-labelled 1200 K and 300 K ethanol, never trained on
    holdout = {
        "1200 K": ase.io.read(DATA / "ethanol_test_1200K.xyz", ":50"),
        "300 K": ase.io.read(DATA / "ethanol_test_300K.xyz", "50:"),
    }
    ase.io.write(args.out / "holdout.xyz", holdout["1200 K"], format="extxyz")

    model = args.out / "seed_model" / "model.model"
    if args.only != "timing" or not model.exists():
        model = train_seed_model(args.out, args.seed_frames, args.epochs)
    if args.only != "timing":
        write_json(args.out / "loop.json", active_learning(model, holdout, args))
    if args.only != "loop":
        timing = {}
        for walkers in (1, 2, 4):
            folder = args.out / f"timing_{walkers}_walkers"
            if folder.exists():  # eip-al refuses a --workdir that holds a run
                shutil.rmtree(folder)
            timing[walkers] = run(eip_al(model, folder, args, walkers, 1, "copy"),
                                  args.out / f"timing_{walkers}.log")  # fmt: skip
            print(f"one generation, {walkers} walker(s): {timing[walkers]:.0f} s", flush=True)
        write_json(args.out / "timing.json", {"timing_s": timing, "load": os.getloadavg()})
    if not ((args.out / "loop.json").exists() and (args.out / "timing.json").exists()):
        return 0
    loop = json.loads((args.out / "loop.json").read_text())
    timing = json.loads((args.out / "timing.json").read_text())
    summary = {"settings": {k: str(v) for k, v in vars(args).items()}, **loop, **timing}
    write_json(args.out / "summary.json", summary)
    (args.out / "summary.md").write_text(summary_markdown(summary))
    print((args.out / "summary.md").read_text())
    return 0


def active_learning(model: Path, holdout: dict, args) -> dict:
    """``eip-al`` from the seed model; every generation's model scored on both held-out sets."""
    from eip_plugins.active_learning import evaluate_holdout
    from eip_plugins.frameworks import make_uq_calculator

    workdir = args.out / "al_run"
    seconds = run(eip_al(model, workdir, args, args.walkers, args.generations, "mace"),
                  args.out / "al_run.log")  # fmt: skip
    rows = json.loads((workdir / "al_summary.json").read_text())
    print(f"eip-al: {args.generations} generations in {seconds / 60:.1f} min", flush=True)
    state = json.loads((workdir / "al_state.json").read_text())
    models = [str(model)] + [g["model"] for g in state["generations"]]
    for row, path in zip(rows, models, strict=True):
        calc = make_uq_calculator("mace", path)
        row["holdout_300K"] = evaluate_holdout(calc, holdout["300 K"])
        row["train_frames"] = args.seed_frames + sum(
            g["n_added"] for g in state["generations"][: row["generation"]]
        )
    return {"generations": rows, "al_wall_s": seconds}


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2))


def summary_markdown(summary: dict) -> str:
    s = summary["settings"]
    lines = [
        f"Seed model: MACE e2ip on {s['seed_frames']} frames of 300 K ethanol, {s['epochs']} "
        f"epochs; each generation: {s['walkers']} UDD walkers at {s['temperature']} K, "
        f"{s['steps']} steps each, up to {s['max_frames']} GFN2-xTB labels of frames with mean "
        f"σ ≤ {s['threshold_max']} eV/Å, retrained from scratch.",
        "",
        "| generation | training frames | force MAE 1200 K (eV/Å) | force RMSE 1200 K | "
        "mean σ 1200 K | force MAE 300 K | mean σ along the walkers |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in summary["generations"]:
        walkers = f"{r['mean_uncertainty']:.3f}" if "mean_uncertainty" in r else "–"
        lines.append(
            f"| {r['generation']} | {r['train_frames']} | {r['holdout_force_mae']:.3f} | "
            f"{r['holdout_force_rmse']:.3f} | {r['holdout_mean_sigma']:.3f} | "
            f"{r['holdout_300K']['force_mae']:.3f} | {walkers} |"
        )
    t = summary["timing_s"]
    base = t[1] if 1 in t else t["1"]
    lines += ["", "| walkers per generation | wall time (s) | ratio to 1 walker |", "|---|---|---|"]
    for walkers, seconds in t.items():
        lines.append(f"| {walkers} | {seconds:.0f} | {seconds / base:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
