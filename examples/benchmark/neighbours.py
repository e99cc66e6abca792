"""The neighbour distance (``--density_neighbours``) against the Gaussian distance alone, on a
finished benchmark run.

For every run (the first, ``seed1``, ``seed2`` ...) of one framework's benchmark output, the
trained e2ip model (``--head eip``: the eip model) is refitted twice by ``eip-calibrate
<framework>`` (default settings otherwise, written beside it; reused when present):
``--density_neighbours M`` (``<stem>_neighbours<suffix>``; the default calibration stores
M = 4096) and ``--density_neighbours 0`` (``<stem>_gaussian<suffix>``: the per-element Gaussian
distance alone, the default before 2026-12-07), and both are evaluated with the benchmark's
metrics. Nothing is retrained.

    .venv-nequip/bin/python -m examples.benchmark.neighbours --framework nequip --out benchmark_out
    .venv-mace/bin/python -m examples.benchmark.neighbours --framework mace --out benchmark_out
    .venv-mace/bin/python -m examples.benchmark.neighbours --framework mace --head eip ...

Writes ``OUT/<framework>/neighbours.json`` (every run's metrics; ``neighbours_eip.json`` for
``--head eip``) and ``neighbours.md`` (mean ± standard deviation over the runs of ρ, CE and NLL
per split; printed as well). mve has no epistemic part for the distance to scale.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np

from examples.benchmark import common

LOG = logging.getLogger("benchmark.neighbours")
#: the splits reported, in this order, where the data has them (the water box only without
#: ``--no-water``)
SPLITS = {
    "test_300K": "300 K",
    "test_hot": "1200 K",
    "test_unseen": "unseen",
    "water_300K": "water 300 K",
    "water_hot": "water 600 K",
}
METRICS = ("spearman", "ce", "nll")
#: the heads the tool refits (mve's Σ has no epistemic part, so the distance leaves it as it is)
HEADS = ("e2ip", "eip")


def labels(head: str) -> tuple[str, str]:
    """The two methods' names in the tables: the Gaussian distance alone, then with the
    neighbour distance."""
    return f"{head}, Gaussian distance only", f"{head} + neighbours"


def output_name(head: str) -> str:
    """The stem of the tool's files in ``OUT/<framework>/`` for ``head``."""
    return "neighbours" if head == "e2ip" else f"neighbours_{head}"


def run_dirs(out: Path, framework: str, head: str = "e2ip") -> list[Path]:
    """The ``head`` model folder of every run of ``out/<framework>``, first run first."""
    models = out / framework / "models"
    dirs = [models / head, *sorted(p / head for p in models.glob("seed*"))]
    return [d for d in dirs if d.is_dir()]


def evaluate_run(
    framework: str, part, workdir: Path, data: Path, neighbours: int, head: str = "e2ip"
) -> dict:
    """Metrics (method -> split -> name) of one run's ``head`` model with and without stored
    neighbours."""
    model = part.trained_model(workdir)
    default = model.with_name(f"{model.stem}_gaussian{part.MODEL_SUFFIX}")
    target = model.with_name(f"{model.stem}_neighbours{part.MODEL_SUFFIX}")
    refits = (
        (default, ["--density_neighbours=0"]),
        (target, [f"--density_neighbours={neighbours}"]),
    )
    for path, flags in refits:
        if not path.exists():
            log = path.with_suffix(".log")
            LOG.info("%s: eip-calibrate %s %s -> %s", framework, model, flags, path.name)
            common.run_head_tool("eip-calibrate", framework, model, data, path, flags, log)
    label_default, label_neighbours = labels(head)
    calcs = {
        label_default: part.force_calculator(str(default), plain=False),
        label_neighbours: part.force_calculator(str(target), plain=False),
    }
    metrics, _ = common.evaluate_splits(data, calcs, part._predict, LOG)
    return {m: {s: metrics[m][s] for s in SPLITS if s in metrics[m]} for m in calcs}


def markdown(runs: list[dict], head: str = "e2ip") -> str:
    """Mean ± std over the runs of each metric, per method and split (the splits of
    :data:`SPLITS` the runs have)."""
    methods = labels(head)
    splits = [s for s in SPLITS if any(s in r[methods[0]] for r in runs)]
    names = " / ".join(SPLITS[s] for s in splits)
    header = "| method | " + " | ".join(f"{k} ({names})" for k in METRICS) + " |"
    lines = [header, "|" + "---|" * (len(METRICS) + 1)]
    for method in methods:
        cells = []
        for key in METRICS:
            parts = []
            for split in splits:
                values = np.array([r[method][split][key] for r in runs if split in r[method]])
                spread = f" ± {values.std(ddof=1):.2f}" if len(values) > 1 else ""
                parts.append(f"{values.mean():.2f}{spread}")
            cells.append(" / ".join(parts))
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = common.finished_run_parser(
        "python -m examples.benchmark.neighbours", __doc__.split("\n")[0]
    )
    p.add_argument("--neighbours", type=int, default=4096, help="stored training atoms per element")
    p.add_argument("--head", choices=HEADS, default="e2ip", help="the trained head to refit")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    results = common.finished_run_results(p, args)
    dirs = run_dirs(args.out, args.framework, args.head)
    if not dirs:
        p.error(f"--out: no {args.head} model under {args.out / args.framework / 'models'}")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    data = Path(json.loads(results.read_text())["data"])
    part = importlib.import_module(f"examples.benchmark.{args.framework}_part")
    runs = [evaluate_run(args.framework, part, d, data, args.neighbours, args.head) for d in dirs]
    result = {
        "head": args.head,
        "neighbours": args.neighbours,
        "runs": [str(d) for d in dirs],
        "metrics": runs,
    }
    common.write_tool_outputs(
        args.out / args.framework, output_name(args.head), result, markdown(runs, args.head)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
