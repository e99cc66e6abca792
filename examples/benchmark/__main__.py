"""Benchmark: single-model evidential heads versus a plain model and a deep ensemble.

One command produces everything (data, training of every model through the frameworks' own CLIs,
metrics, cost ratios, tables and plots):

    .venv-mace/bin/python -m examples.benchmark [--quick] [--frameworks mace,nequip] [--out DIR]

The MACE part runs in ``.venv-mace`` and the NequIP part in ``.venv-nequip`` (they can never share
an interpreter); each writes ``OUT/<framework>/results.json``, merged here into
``OUT/results.md``, ``OUT/results.json`` and the PNG figures. See examples/benchmark/README.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from examples.benchmark import data as bdata
from examples.benchmark.report import write_report

REPO = Path(__file__).resolve().parents[2]
LOG = logging.getLogger("benchmark")
FRAMEWORKS = ("mace", "nequip")


def default_python(framework: str) -> Path:
    return REPO / f".venv-{framework}" / "bin" / "python"


def run_part(framework: str, python: Path, data: Path, out: Path, args) -> dict:
    """Run ``examples.benchmark.<framework>_part`` in its own interpreter, streaming progress."""
    cmd = [
        str(python),
        "-m",
        f"examples.benchmark.{framework}_part",
        f"--data={data}",
        f"--out={out}",
        f"--jobs={args.jobs}",
    ]
    if args.quick:
        cmd.append("--quick")
    if args.epochs is not None:
        cmd.append(f"--epochs={args.epochs}")
    if args.reuse:
        cmd.append("--reuse")
    if args.recalibrate:
        cmd.append("--recalibrate")
    if args.members is not None:
        cmd.append(f"--members={args.members}")
    cmd.append(f"--seeds={args.seeds}")
    heads, backbone = getattr(args, f"{framework}_heads"), getattr(args, f"{framework}_backbone")
    if heads:
        cmd.append(f"--heads={heads}")
    if backbone:
        cmd.append(f"--backbone={backbone}")
    log_path = out / framework / "part.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.pop("EIP_PLUGINS_DISABLE", None)
    LOG.info("%s part: %s", framework, shlex.join(cmd))
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for line in proc.stdout:
            log.write(line)
            if " benchmark." in line:
                print(f"[{framework}] {line.rstrip()}", flush=True)
        proc.wait()
    result_path = out / framework / "results.json"
    if proc.returncode != 0 or not result_path.exists():
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
        LOG.error(
            "%s part failed (exit %s), log %s:\n%s", framework, proc.returncode, log_path, tail
        )
        return {"error": f"exit code {proc.returncode}; see {log_path}"}
    LOG.info("%s part done in %.0f s", framework, time.perf_counter() - t0)
    return json.loads(result_path.read_text())


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m examples.benchmark",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="tiny data, tiny models, 2 epochs")
    p.add_argument("--frameworks", default="mace,nequip", help="comma-separated subset")
    p.add_argument("--out", type=Path, default=Path("benchmark_out"), help="output folder")
    p.add_argument("--epochs", type=int, default=None, help="override the epochs of every model")
    p.add_argument("--jobs", type=int, default=2, help="trainings at the same time (per part)")
    p.add_argument("--members", type=int, default=None, help="deep-ensemble size (default 4)")
    p.add_argument(
        "--seeds",
        type=int,
        default=None,
        help="independent runs of every method (disjoint seeds; metrics as mean ± std); "
        "default 3, 1 with --quick",
    )
    p.add_argument("--no-water", action="store_true", help="leave out the periodic water box")
    p.add_argument("--reuse", action="store_true", help="reuse models already trained in --out")
    p.add_argument(
        "--recalibrate",
        action="store_true",
        help="with --reuse: refit every head model's calibration (eip-calibrate) and the "
        "calibration variants before evaluating, without retraining",
    )
    p.add_argument("--mace-heads", default=None, help="MACE heads (default e2ip,eip,mve)")
    p.add_argument("--nequip-heads", default=None, help="NequIP heads (default e2ip,eip,mve)")
    p.add_argument(
        "--mace-backbone",
        default=None,
        help="mace_l1 (default: 16x0e+16x1o) or mace_scalar (16x0e: the head builds geometric "
        "features)",
    )
    p.add_argument(
        "--nequip-backbone",
        default=None,
        help="nequip_l1 (default), nequip_lmax0 (scalar features) or allegro (nequip-allegro)",
    )
    p.add_argument("--mace-python", type=Path, default=default_python("mace"))
    p.add_argument("--nequip-python", type=Path, default=default_python("nequip"))
    args = p.parse_args(argv)
    if args.seeds is None:
        args.seeds = 1 if args.quick else 3
    if args.seeds < 1:
        p.error(f"--seeds: invalid value {args.seeds}, must be >= 1")
    args.frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    bad = sorted(set(args.frameworks) - set(FRAMEWORKS))
    if bad:
        p.error(f"--frameworks: unknown {bad}; choose from {list(FRAMEWORKS)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if not (out / ".gitignore").exists():  # outputs never end up in a commit
        (out / ".gitignore").write_text("*\n")
    t0 = time.perf_counter()
    settings = bdata.QUICK_DATA if args.quick else bdata.DataSettings()
    if args.no_water:
        settings = replace(settings, water=False)
    folder = bdata.ensure_data(settings)
    manifest = json.loads((folder / "manifest.json").read_text())
    t_data = time.perf_counter() - t0
    parts = {}
    for framework in args.frameworks:
        python = getattr(args, f"{framework}_python")
        if not python.exists():
            parts[framework] = {"error": f"no interpreter {python} (run `make venv-{framework}`)"}
            LOG.error(parts[framework]["error"])
            continue
        parts[framework] = run_part(framework, python, folder, out, args)
    wall = time.perf_counter() - t0
    command = " ".join(["python -m examples.benchmark", shlex.join(argv or sys.argv[1:])]).strip()
    header = {
        "command": command,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": f"{platform.node()} ({os.cpu_count()} CPUs)",
        "data": {"folder": str(folder), **manifest},
        "wall_s": {"data": t_data, "total": wall},
        "summary": (
            f"`{command}`, "
            f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, wall time {wall / 60:.1f} min "
            f"(data {t_data:.0f} s, hash {manifest['hash']})."
        ),
    }
    write_report(out, parts, header)
    LOG.info("wrote %s and %s (%.1f min)", out / "results.md", out / "results.json", wall / 60)
    return 1 if any("error" in p for p in parts.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
