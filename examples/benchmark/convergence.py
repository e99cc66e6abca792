"""Convergence study: force MAE of the plain model and of every head against the training budget.

Does a head cost force accuracy, or only slow convergence? For every budget (``--epochs``, e.g.
10,20,40,80) the plain model, each head with the default force objective (``detached``) and e2ip
with the papers' (``e2ip_nll``) are trained through the framework's own CLI exactly as the
benchmark trains them (same data, architecture, batch size, learning rate and seeds; the
framework part's ``train_all``), ``--seeds`` times, and scored on every test split::

    .venv-mace/bin/python -m examples.benchmark.convergence --framework mace \\
        --epochs 10,20,40,80 --seeds 2 --no-water --out benchmark_out_convergence
    .venv-nequip/bin/python -m examples.benchmark.convergence --framework nequip ...

Writes ``OUT/<framework>/convergence.json`` (force MAE and RMSE per budget, method, seed and
split; training CPU seconds per epoch), ``convergence.md`` (tables: MAE mean ± std over the
seeds, MAE / plain of the same seed, training time per epoch / plain) and ``convergence.png``
(MAE against epochs, one panel per split, one line per method). ``--reuse`` keeps models already
trained in OUT.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import math
import time
from pathlib import Path

import numpy as np

from examples.benchmark import common
from examples.benchmark import data as bdata

LOG = logging.getLogger("benchmark.convergence")
METHOD_LABEL = {
    "plain": "plain",
    "e2ip": "e2ip",
    "eip": "eip",
    "mve": "mve",
    "e2ip_nll": "e2ip, papers' objective (nll)",
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m examples.benchmark.convergence",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--framework", choices=("mace", "nequip"), required=True)
    p.add_argument("--epochs", default="10,20,40,80", help="comma-separated training budgets")
    p.add_argument("--seeds", type=int, default=1, help="independent runs per budget")
    p.add_argument("--heads", default=None, help="heads (default: the part's, e2ip,eip,mve)")
    p.add_argument("--jobs", type=int, default=2, help="trainings at the same time")
    p.add_argument("--out", type=Path, default=Path("benchmark_out_convergence"))
    p.add_argument("--no-water", action="store_true", help="molecules only (no water box)")
    p.add_argument("--quick", action="store_true", help="tiny data and models (a check)")
    p.add_argument("--reuse", action="store_true", help="reuse models already trained in --out")
    args = p.parse_args(argv)
    try:
        args.epochs = sorted({int(e) for e in args.epochs.split(",") if e.strip()})
    except ValueError:
        p.error(f"--epochs: {args.epochs!r} is not a comma-separated list of whole numbers")
    if not args.epochs or min(args.epochs) < 1:
        p.error(f"--epochs: {args.epochs!r}, every budget must be >= 1 epoch")
    if args.seeds < 1:
        p.error(f"--seeds: invalid value {args.seeds}, must be >= 1")
    return args


def budget_settings(settings, epochs: int, k: int):
    """The part's settings for one budget and run k: no ensemble (one plain model), seeds as
    the benchmark's run k (:func:`common.seed_settings`)."""
    settings = common.seed_settings(settings, k)
    return dataclasses.replace(settings, epochs=epochs, members=1)


def score(part, data: Path, models: dict[str, str]) -> dict[str, dict[str, dict]]:
    """Force MAE and RMSE (eV/A, per component) of every model on every test split."""
    out: dict[str, dict[str, dict]] = {m: {} for m in models}
    for method, path in models.items():
        calc = part.force_calculator(path, plain=method == "plain")
        for split in bdata.TEST_SPLITS:
            frames = bdata.read_split(data, split)
            if not frames:
                continue
            forces, ref = [], []
            for frame in frames:
                atoms = frame.copy()
                atoms.calc = calc
                forces.append(np.array(atoms.get_forces()))
                ref.append(frame.arrays["REF_forces"])
            report = common.accuracy_report(
                {"forces": np.concatenate(forces), "forces_ref": np.concatenate(ref)}
            )
            out[method][split] = {k: report[k] for k in ("force_mae", "force_rmse")}
    return out


def framework_part(framework: str):
    """The benchmark's part of ``framework`` (``train_all``, ``force_calculator``, settings)."""
    return importlib.import_module(f"examples.benchmark.{framework}_part")


def run(args) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    part = framework_part(args.framework)
    if args.framework == "mace":  # evaluation in float64, as the benchmark's MACE part
        import torch

        torch.set_default_dtype(torch.float64)
    settings = part.QUICK if args.quick else part.DEFAULT
    if args.heads:
        settings = dataclasses.replace(settings, heads=tuple(args.heads.split(",")))
    data_settings = bdata.QUICK_DATA if args.quick else bdata.DataSettings()
    if args.no_water:
        data_settings = bdata.without_water(data_settings)
    data = bdata.ensure_data(data_settings)
    out = args.out.resolve() / args.framework
    runs = []
    t0 = time.perf_counter()
    for epochs in args.epochs:
        for k in range(args.seeds):
            s = budget_settings(settings, epochs, k)
            LOG.info("%s: %d epochs, run %d of %d", args.framework, epochs, k + 1, args.seeds)
            work = out / f"epochs_{epochs}" / f"seed{k}"
            costs = part.train_all(data, work, s, args.jobs, args.reuse)
            models = {
                ("plain" if name == "plain_0" else name): c["model"] for name, c in costs.items()
            }
            runs.append(
                {
                    "epochs": epochs,
                    "run": k,
                    "seed": s.seed,
                    "metrics": score(part, data, models),
                    "epoch_cpu_s": {
                        ("plain" if n == "plain_0" else n): c.get("epoch_s")
                        for n, c in costs.items()
                    },
                }
            )
            common.write_json(out / "convergence.json", result(args, settings, data, runs, t0))
    summary = result(args, settings, data, runs, t0)
    common.write_json(out / "convergence.json", summary)
    (out / "convergence.md").write_text(markdown(summary))
    plot(summary, out / "convergence.png")
    LOG.info("wrote %s (%.1f min)", out / "convergence.md", (time.perf_counter() - t0) / 60)
    return summary


def result(args, settings, data: Path, runs: list[dict], t0: float) -> dict:
    return {
        "framework": args.framework,
        "command": "python -m examples.benchmark.convergence " + " ".join(args.argv),
        "settings": dataclasses.asdict(settings),
        "data": str(data),
        "epochs": args.epochs,
        "seeds": args.seeds,
        "runs": runs,
        "wall_s": time.perf_counter() - t0,
    }


# -- report ----------------------------------------------------------------------------------------
def methods_of(summary: dict) -> list[str]:
    found = {m for r in summary["runs"] for m in r["metrics"]}
    return [m for m in METHOD_LABEL if m in found]


def splits_of(summary: dict) -> list[str]:
    found = {s for r in summary["runs"] for rows in r["metrics"].values() for s in rows}
    return [s for s in bdata.TEST_SPLITS if s in found]


def values(summary: dict, epochs: int, method: str, split: str, ratio: bool = False) -> np.ndarray:
    """Force MAE of ``method`` at ``epochs`` over the runs (divided by the plain model's of the
    same run with ``ratio``)."""
    out = []
    for r in summary["runs"]:
        row = r["metrics"].get(method, {}).get(split)
        if r["epochs"] != epochs or row is None:
            continue
        value = row["force_mae"]
        if ratio:
            value = value / r["metrics"]["plain"][split]["force_mae"]
        out.append(value)
    return np.asarray(out, dtype=float)


def fmt(array: np.ndarray, digits: int) -> str:
    if array.size == 0:
        return "–"
    if array.size == 1:
        return f"{array[0]:.{digits}f}"
    return f"{array.mean():.{digits}f} ± {array.std(ddof=1):.{digits}f}"


def markdown(summary: dict) -> str:
    from examples.benchmark.report import SPLIT_LABEL

    methods, splits, budgets = methods_of(summary), splits_of(summary), summary["epochs"]
    seeds = summary["seeds"]
    spread = f"mean ± std over {seeds} runs" if seeds > 1 else "one run"
    lines = [f"`{summary['command']}` ({summary['wall_s'] / 60:.0f} min wall).", ""]
    lines += [f"Force MAE (eV/Å; {spread}):", ""]
    header = "| split | method | " + " | ".join(f"{e} epochs" for e in budgets) + " |"
    rule = "|---|---|" + "---|" * len(budgets)
    lines += [header, rule]
    for split in splits:
        for m in methods:
            cells = [fmt(values(summary, e, m, split), 3) for e in budgets]
            lines.append(
                f"| {SPLIT_LABEL.get(split, split)} | {METHOD_LABEL[m]} | "
                + " | ".join(cells)
                + " |"
            )
    lines += ["", f"Force MAE / plain model of the same run ({spread}):", "", header, rule]
    for split in splits:
        for m in methods:
            if m == "plain":
                continue
            cells = [fmt(values(summary, e, m, split, ratio=True), 2) for e in budgets]
            lines.append(
                f"| {SPLIT_LABEL.get(split, split)} | {METHOD_LABEL[m]} | "
                + " | ".join(cells)
                + " |"
            )
    lines += ["", "Training CPU time per epoch / plain (median over the budgets and runs):", ""]
    lines += ["| method | s/epoch | ratio |", "|---|---|---|"]
    for m in methods:
        cpu = [r["epoch_cpu_s"].get(m) for r in summary["runs"]]
        base = [r["epoch_cpu_s"].get("plain") for r in summary["runs"]]
        pairs = [(c, b) for c, b in zip(cpu, base, strict=True) if c and b and not math.isnan(c)]
        if not pairs:
            continue
        lines.append(
            f"| {METHOD_LABEL[m]} | {np.median([c for c, _ in pairs]):.2f} | "
            f"{np.median([c / b for c, b in pairs]):.2f} |"
        )
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from examples.benchmark.report import SPLIT_LABEL

    methods, splits, budgets = methods_of(summary), splits_of(summary), summary["epochs"]
    fig, axes = plt.subplots(1, len(splits), figsize=(3.6 * len(splits), 3.4), squeeze=False)
    for ax, split in zip(axes[0], splits, strict=True):
        for m in methods:
            stats = [values(summary, e, m, split) for e in budgets]
            x = [e for e, v in zip(budgets, stats, strict=True) if v.size]
            mean = [v.mean() for v in stats if v.size]
            std = [v.std(ddof=1) if v.size > 1 else 0.0 for v in stats if v.size]
            # plain drawn wide and pale underneath: a detached head's line lies on it
            style = {"linewidth": 5, "alpha": 0.35} if m == "plain" else {}
            ax.errorbar(x, mean, yerr=std, marker="o", capsize=3, label=METHOD_LABEL[m], **style)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(budgets, [str(e) for e in budgets])
        ax.set_xlabel("epochs")
        ax.set_title(SPLIT_LABEL.get(split, split))
    axes[0][0].set_ylabel("force MAE (eV/Å)")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"{summary['framework']}: force MAE against the training budget")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    import sys

    args = parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
