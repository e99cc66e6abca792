"""Framework-agnostic helpers of the benchmark (importable in both .venv-mace and .venv-nequip).

Metrics are SPEC §3 exactly as :mod:`eip_plugins.core.metrics` computes them; this module only
stacks predictions, builds the deep ensemble's predictive distribution, rotates structures,
times things (interleaved rounds, medians) and runs the frameworks' CLIs with their peak memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import torch

LOG = logging.getLogger("benchmark")

# Metric names of a method/split report (SPEC §3), in table order.
METRICS = (
    "force_mae",
    "force_rmse",
    "spearman",
    "roc_auc",
    "spearman_structure",
    "roc_auc_structure",
    "nll",
    "ce",
    "miscalibration_area",
    "energy_score",
    "rotational_error",
    "mean_uncertainty",
    "mean_error",
)
ACCURACY_METRICS = ("force_mae", "force_rmse")
ENSEMBLE_JITTER = 1e-6  # (eV/A)^2 added to the diagonal of the committee covariance
ROTATION_SEED = 1234


# -- tools that read a finished run ----------------------------------------------------------------
def finished_run_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The argument parser of a tool that reads a finished benchmark run: ``--framework`` and
    ``--out`` (check them with :func:`finished_run_results`)."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--framework", choices=("mace", "nequip"), required=True)
    p.add_argument("--out", type=Path, default=Path("benchmark_out"), help="benchmark output")
    return p


def finished_run_results(parser: argparse.ArgumentParser, args) -> Path:
    """``OUT/<framework>/results.json`` of the parsed ``args``; the parser's one-line error when
    the run has none. Makes ``args.out`` absolute: the tools run ``eip-calibrate`` and
    ``nequip-compile`` in the models' folders, where a relative ``--out`` names nothing."""
    args.out = args.out.resolve()
    path = args.out / args.framework / "results.json"
    if not path.exists():
        parser.error(f"--out: {path} not found (run the benchmark)")
    return path


def write_tool_outputs(folder: Path, name: str, result: dict, text: str) -> None:
    """A finished-run tool's outputs: ``folder/<name>.json`` (``result``) and ``<name>.md``
    (``text``, printed as well)."""
    write_json(folder / f"{name}.json", result)
    (folder / f"{name}.md").write_text(text)
    print(text)


# -- predictions -----------------------------------------------------------------------------------
def stack_predictions(rows: list[dict]) -> dict:
    """Concatenate per-structure result dicts (numpy) into per-atom arrays plus ``batch``.

    Each row holds ``forces`` (n, 3), ``forces_ref`` (n, 3) and optionally ``sigma`` (n,),
    ``cov`` (n, 3, 3), ``forces_comm`` (M, n, 3) and raw evidential fields.
    """
    out: dict = {}
    for g, row in enumerate(rows):
        n = len(row["forces"])
        row = {**row, "batch": np.full(n, g)}
        for key, value in row.items():
            out.setdefault(key, []).append(np.asarray(value))
    stacked = {}
    for key, values in out.items():
        axis = 1 if key == "forces_comm" else 0
        stacked[key] = np.concatenate(values, axis=axis)
    if "sigma" in stacked:
        stacked["uncertainty"] = np.array([np.mean(r["sigma"]) for r in rows])
    return stacked


def committee_gaussian(forces_comm: np.ndarray, jitter: float = ENSEMBLE_JITTER):
    """Mean, covariance and sigma of a deep ensemble's forces.

    Args:
        forces_comm: (M, N, 3) forces of the M members, eV/A.

    Returns:
        mean (N, 3); cov (N, 3, 3), the unbiased (M - 1) per-atom sample covariance plus
        ``jitter`` * I; sigma (N,) = sqrt(tr(cov) / 3) of the sample covariance (no jitter).
    """
    f = np.asarray(forces_comm, dtype=float)
    mean = f.mean(0)
    dev = f - mean
    cov = np.einsum("mni,mnj->nij", dev, dev) / max(f.shape[0] - 1, 1)
    sigma = np.sqrt(np.trace(cov, axis1=1, axis2=2) / 3.0)
    return mean, cov + jitter * np.eye(3), sigma


def ensemble_row(forces_comm: np.ndarray) -> dict:
    """Per-frame prediction row of a deep ensemble from its members' forces (M, n, 3).

    ``cov``: committee covariance + jitter (the ensemble's predictive law); ``cov_iso``:
    sigma_i^2 I + jitter (the isotropic variant reported as ``ensemble_iso``).
    """
    mean, cov, sigma = committee_gaussian(forces_comm)
    iso = (sigma**2)[:, None, None] * np.eye(3) + ENSEMBLE_JITTER * np.eye(3)
    return {"forces": mean, "cov": cov, "cov_iso": iso, "sigma": sigma, "forces_comm": forces_comm}


def ensemble_report(pred: dict) -> dict:
    """SPEC §3 report of a deep ensemble: Gaussian N(mean, ``pred["cov"]``)."""
    from eip_plugins.core.metrics import force_error, uncertainty_report
    from eip_plugins.core.predictive import MultivariateNormal

    t = lambda x: torch.as_tensor(np.asarray(x), dtype=torch.float64)  # noqa: E731
    forces, ref, sigma = t(pred["forces"]), t(pred["forces_ref"]), t(pred["sigma"])
    dist = MultivariateNormal(forces, t(pred["cov"]))
    batch = torch.as_tensor(pred["batch"])
    report = uncertainty_report(
        dist, forces, ref, sigma, batch=batch, num_graphs=int(batch.max()) + 1
    )
    report["error"] = force_error(forces, ref).numpy()
    report["sigma"] = np.asarray(pred["sigma"])
    report["mean_uncertainty"] = float(np.mean(pred["uncertainty"]))
    return report


def head_report(pred: dict) -> dict:
    """SPEC §3 report of a single model with an evidential head (its own predictive law)."""
    from eip_plugins.evaluation import evaluate_predictions

    return evaluate_predictions(pred)


def accuracy_report(pred: dict) -> dict:
    """Force MAE / RMSE (per component) and the per-atom error of a model without uncertainty."""
    from eip_plugins.core.metrics import component_errors, force_error

    forces = torch.as_tensor(pred["forces"], dtype=torch.float64)
    ref = torch.as_tensor(pred["forces_ref"], dtype=torch.float64)
    errs = component_errors(forces, ref)
    return {
        "force_mae": errs["mae"],
        "force_rmse": errs["rmse"],
        "error": force_error(forces, ref).numpy(),
    }


def rotational_error(covs: list[np.ndarray], covs_rot: list[np.ndarray], rotation) -> float:
    """Mean over atoms of |Sigma(R x) - R Sigma(x) R^T|_F / |Sigma(x)|_F (SPEC §3)."""
    from eip_plugins.core.metrics import rotational_consistency_error

    cov = torch.as_tensor(np.concatenate(covs), dtype=torch.float64)
    cov_rot = torch.as_tensor(np.concatenate(covs_rot), dtype=torch.float64)
    rot = torch.as_tensor(np.asarray(rotation), dtype=torch.float64)
    return rotational_consistency_error(cov, cov_rot, rot)


def random_rotation(seed: int = ROTATION_SEED) -> np.ndarray:
    """A fixed proper rotation matrix (3, 3), uniformly random from ``seed``."""
    from scipy.spatial.transform import Rotation

    return Rotation.random(random_state=seed).as_matrix()


def rotate_frame(atoms, rotation: np.ndarray):
    """Copy of ``atoms`` rotated by ``rotation`` (positions about the origin, cell, REF_forces)."""
    rotated = atoms.copy()
    rotated.positions = atoms.positions @ rotation.T
    if atoms.cell.rank == 3:
        rotated.set_cell(atoms.cell.array @ rotation.T, scale_atoms=False)
    if "REF_forces" in atoms.arrays:
        rotated.arrays["REF_forces"] = atoms.arrays["REF_forces"] @ rotation.T
    return rotated


def evaluate_splits(data: Path, calcs: dict, predict: Callable, log=LOG) -> tuple[dict, dict]:
    """Every SPEC §3 metric per method and test split, plus per-atom arrays for the plots.

    Args:
        calcs: method -> calculator object(s) (``"ensemble"`` plus head names).
        predict: ``predict(calc, frames, method) -> rows`` (see :func:`stack_predictions`);
            ensemble rows come from :func:`ensemble_row`, head rows carry ``sigma``, ``cov`` (the
            covariance sigma_i is built from) and the raw evidential fields.

    "plain" is ensemble member 0 (the same model: its forces are ``forces_comm[0]``);
    "ensemble_iso" is the ensemble with an isotropic Gaussian (same predictions).
    """
    from examples.benchmark.data import TEST_SPLITS, read_split

    rotation = random_rotation()
    names = ["plain", *calcs]
    if "ensemble" in calcs:
        names.insert(names.index("ensemble") + 1, "ensemble_iso")
    metrics: dict = {m: {} for m in names}
    arrays: dict = {m: {} for m in names}
    for split in TEST_SPLITS:
        frames = read_split(data, split)
        if not frames:
            continue
        rotated = [rotate_frame(f, rotation) for f in frames]
        predicted: dict = {}
        for method, calc in calcs.items():
            t0 = time.perf_counter()
            if method in DERIVED:  # a transformation of another method's predictions
                source, transform = DERIVED[method]
                rows = [transform(r) for r in predicted[source][0]]
                rows_rot = [transform(r) for r in predicted[source][1]]
            else:
                rows = predict(calc, frames, method)
                rows_rot = predict(calc, rotated, method)
            predicted[method] = (rows, rows_rot)
            pred = stack_predictions(rows)
            reports = {}
            if method == "ensemble":
                reports["ensemble"] = ensemble_report(pred)
                reports["ensemble_iso"] = ensemble_report({**pred, "cov": pred["cov_iso"]})
                plain = accuracy_report(
                    {"forces": pred["forces_comm"][0], "forces_ref": pred["forces_ref"]}
                )
                metrics["plain"][split] = scalar_metrics(plain)
                arrays["plain"][split] = {"error": plain["error"]}
            else:
                reports[method] = head_report(pred)
            for name, report in reports.items():
                key = "cov_iso" if name == "ensemble_iso" else "cov"
                report["rotational_error"] = rotational_error(
                    [r[key] for r in rows], [r[key] for r in rows_rot], rotation
                )
                metrics[name][split] = scalar_metrics(report)
                metrics[name][split]["reliability_observed"] = report["reliability"]["observed"]
                arrays[name][split] = {"sigma": report["sigma"], "error": report["error"]}
            r = reports[method]
            log.info(
                "%s %s: MAE %.3f, Spearman %.2f, NLL %.2f, CE %.3f (%.0f s)",
                method,
                split,
                r["force_mae"],
                r["spearman"],
                r["nll"],
                r["ce"],
                time.perf_counter() - t0,
            )
    return metrics, arrays


def scalar_metrics(report: dict) -> dict:
    """The float metrics of a report (arrays and curves dropped), plus ``mean_error`` (mean
    per-atom |F_pred - F_ref|, eV/A)."""
    out = {k: float(v) for k, v in report.items() if k in METRICS and v is not None}
    out["mean_error"] = float(np.mean(report["error"]))
    return out


# -- methods derived from another method's predictions ---------------------------------------------
def mve_density_row(row: dict) -> dict:
    """mve with its covariance scaled by the density factor (1 + r^4), r the feature distance
    (what giving mve the e2ip head's density-aware evidence would amount to): a measured
    alternative, not a head of the package."""
    factor = 1.0 + np.asarray(row["distance"]) ** 4
    out = dict(row)
    out["mve_cov"] = np.asarray(row["mve_cov"]) * factor[:, None, None]
    out["cov"] = np.asarray(row["cov"]) * factor[:, None, None]
    out["sigma"] = np.asarray(row["sigma"]) * np.sqrt(factor)
    return out


DERIVED = {"mve_density": ("mve", mve_density_row)}


def head_row(results: dict, forces, forces_ref, method: str) -> dict:
    """Per-frame row of a model with a head from its calculator ``results``: forces, reference,
    sigma, the covariance sigma is built from, the raw evidential fields and the distance."""
    from eip_plugins.core import keys

    row = {"forces": np.array(forces), "forces_ref": forces_ref}
    row["sigma"] = np.asarray(results[keys.FORCES_UNCERTAINTY])
    aleatoric_only = method.startswith("mve")
    cov_key = keys.FORCES_ALEATORIC_COV if aleatoric_only else keys.FORCES_EPISTEMIC_COV
    row["cov"] = np.asarray(results[cov_key])
    row["distance"] = np.asarray(results.get(keys.FORCES_FEATURE_DISTANCE, np.zeros(len(forces))))
    for key in keys.RAW_PARAMETER_KEYS:
        if key in results:
            row[key] = np.asarray(results[key])
    return row


# -- timing ----------------------------------------------------------------------------------------
def interleaved_timings(
    funcs: dict[str, Callable[[], object]], rounds: int = 5, warmup: int = 1
) -> dict[str, dict[str, list[float]]]:
    """Time each function over ``rounds`` rounds; each round runs every function once in turn.

    The order rotates from round to round, so no method always runs right after the same other
    one. One untimed warm-up call per function first. Returns ``{"cpu": {name: [s, ...]},
    "wall": {...}}``: CPU time of this process (``time.process_time``; the parts run
    single-threaded, so it is the compute time, insensitive to other processes on a shared
    machine) and wall time.
    """
    names = list(funcs)
    for _ in range(warmup):
        for name in names:
            funcs[name]()
    times: dict[str, dict[str, list[float]]] = {"cpu": {}, "wall": {}}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            c0, w0 = time.process_time(), time.perf_counter()
            funcs[name]()
            times["cpu"].setdefault(name, []).append(time.process_time() - c0)
            times["wall"].setdefault(name, []).append(time.perf_counter() - w0)
    return {clock: {n: times[clock][n] for n in names} for clock in times}


def timing_frames(data: Path, n: int) -> list:
    """``n`` structures for timing: half from test_300K, half from water_300K (if present)."""
    from examples.benchmark.data import read_split

    mols, water = read_split(data, "test_300K"), read_split(data, "water_300K")
    n_water = min(len(water), n // 2)
    return mols[: n - n_water] + water[:n_water]


def summarize_timings(raw: dict, n_structures: int, methods: list[str]) -> dict:
    """Medians per structure and ratios: to plain, and ensemble time / method time.

    ``model`` and ``calculator`` use CPU time (the reported figures); ``model_wall`` and
    ``calculator_wall`` the same from wall-clock time.
    """
    out: dict = {"n_structures": n_structures, "raw_cpu_s": raw["cpu"], "raw_wall_s": raw["wall"]}
    for clock, suffix in (("cpu", ""), ("wall", "_wall")):
        for level in ("model", "calculator"):
            per = {
                m: median(raw[clock][f"{level}:{m}"]) / n_structures
                for m in methods
                if f"{level}:{m}" in raw[clock]
            }
            out[level + suffix] = {
                "per_structure_s": per,
                "ratio_to_plain": {m: t / per["plain"] for m, t in per.items()},
                "speedup_vs_ensemble": {m: per["ensemble"] / t for m, t in per.items()},
            }
    return out


def distance_term_cost(with_term: Callable, without_term: Callable, rounds: int) -> dict:
    """CPU time of the e2ip model with / without its feature-distance term (the same model, the
    term skipped by :func:`without_distance_term`), A/B interleaved over ``rounds`` rounds on its
    own so that the ratio is not lost in the noise of the many-method timing."""
    raw = interleaved_timings({"with": with_term, "without": without_term}, rounds=rounds)
    cpu = {k: median(v) for k, v in raw["cpu"].items()}
    return {"ratio": cpu["with"] / cpu["without"], "raw_cpu_s": raw["cpu"]}


def training_costs(costs: dict, heads, n_members: int = 4) -> dict:
    """Per method: epoch CPU time (s), its ratio to plain, the same in wall time, peak RSS (MB),
    wall time of the whole training job (s).

    ``costs`` maps training jobs (``plain_0`` ... ``plain_{M-1}``, head names) to their costs.
    An ensemble trains all its members: its epoch time and wall time are the members' sums.
    """
    members = [costs[f"plain_{k}"] for k in range(n_members)]
    per_method = {"plain": [costs["plain_0"]], "ensemble": members}
    per_method.update({h: [costs[h]] for h in heads if h in costs})
    base = costs["plain_0"]["epoch_s"]
    out = {}
    for method, runs in per_method.items():
        epoch = float(sum(r["epoch_s"] for r in runs))
        epoch_wall = float(sum(r.get("epoch_wall_s", float("nan")) for r in runs))
        out[method] = {
            "epoch_s": epoch,
            "epoch_ratio_to_plain": epoch / base,
            "epoch_wall_s": epoch_wall,
            "epoch_wall_ratio_to_plain": epoch_wall / costs["plain_0"].get("epoch_wall_s", np.nan),
            "peak_rss_mb": max(r.get("peak_rss_mb", float("nan")) for r in runs),
            "wall_s": float(sum(r.get("wall_s", float("nan")) for r in runs)),
            "epochs": runs[0]["epochs"],
        }
    return out


def add_ratios_over_runs(training: dict, per_run: list[dict]) -> None:
    """Add to ``training[method]`` the epoch-time ratio to plain of every run
    (``epoch_ratio_per_run``) and their median (``epoch_ratio_median``): one run's ratio
    carries the noise of two single trainings that shared the machine with other jobs."""
    for method, row in training.items():
        ratios = [run[method]["epoch_ratio_to_plain"] for run in per_run if method in run]
        row["epoch_ratio_per_run"] = ratios
        row["epoch_ratio_median"] = median(ratios)


def median(values) -> float:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.median(values)) if values else float("nan")


# -- subprocesses ----------------------------------------------------------------------------------
def run_measured(cmd: list[str], log_path: Path, env: dict | None = None, cwd=None) -> dict:
    """Run ``cmd`` to completion with output to ``log_path``; wall time (s) and peak RSS (MB).

    Peak RSS is the ``ru_maxrss`` of this child from ``os.wait4`` (Linux: kB). ``env`` entries
    override the inherited environment; a ``None`` value removes the variable.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    full_env = dict(os.environ)
    for key, value in (env or {}).items():  # None removes a variable
        if value is None:
            full_env.pop(key, None)
        else:
            full_env[key] = str(value)
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(map(str, cmd)) + "\n")
        log.flush()
        proc = subprocess.Popen(
            [str(c) for c in cmd], stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=cwd
        )
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {
        "returncode": proc.returncode,
        "wall_s": time.perf_counter() - t0,
        "peak_rss_mb": usage.ru_maxrss / 1024.0,
    }


REPO = Path(__file__).resolve().parents[2]


def train_models(
    framework: str, specs: dict, env: dict, log_name: str, jobs: int, reuse: bool
) -> dict[str, dict]:
    """Run every training through :mod:`.timed_cli`, ``jobs`` at a time.

    ``specs``: job name -> (work folder, CLI command, model file the command writes). With
    ``reuse``, a job whose model file exists is not run again. Returns job name -> measured cost
    (``returncode``, ``wall_s``, ``peak_rss_mb``; kept in ``cost.json`` for ``--reuse``) plus
    ``model``; skipped jobs are left out. RuntimeError with the log's tail if a training failed.
    """
    runs = {}
    for name, (workdir, cmd, model) in specs.items():
        if reuse and model.exists():
            continue
        workdir.mkdir(parents=True, exist_ok=True)
        timed, extra = timed_training(framework, cmd, workdir)
        runs[name] = lambda cmd=timed, wd=workdir, extra=extra: run_measured(
            cmd, wd / log_name, env={**env, **extra}, cwd=wd
        )
    LOG.info("training %d %s models, %d at a time", len(runs), framework, jobs)
    t0 = time.perf_counter()
    results = run_jobs(runs, max_workers=jobs)
    LOG.info("trained in %.0f s", time.perf_counter() - t0)
    costs = {}
    for name, (workdir, cmd, model) in specs.items():
        result = results.get(name)
        if result is not None and (result["returncode"] != 0 or not model.exists()):
            if result.get("skipped"):
                continue
            log = workdir / log_name
            raise RuntimeError(
                f"{Path(cmd[0]).name} for {name} failed (exit {result['returncode']}); "
                f"log {log}:\n{tail(log)}"
            )
        cost_file = workdir / "cost.json"
        if result is not None:  # trained now: keep wall time and peak RSS for --reuse
            write_json(cost_file, result)
        cost = json.loads(cost_file.read_text()) if cost_file.exists() else {}
        costs[name] = {**cost, "model": str(model)}
    return costs


def timed_training(framework: str, cmd: list[str], workdir: Path) -> tuple[list[str], dict]:
    """The command and environment that run the CLI ``cmd`` through :mod:`.timed_cli`."""
    launcher = [sys.executable, "-m", "examples.benchmark.timed_cli", framework, *cmd]
    env = {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "EIP_BENCH_TIMING_FILE": str(workdir / "timing.json"),
    }
    return launcher, env


def fit_costs(workdir: Path, epochs: int) -> dict:
    """Training-loop cost of a finished run: CPU and wall seconds per epoch (``timing.json``)."""
    path = workdir / "timing.json"
    if not path.exists():
        return {"epoch_s": float("nan"), "epoch_wall_s": float("nan")}
    t = json.loads(path.read_text())
    return {
        "fit_cpu_s": t["fit_cpu_s"],
        "fit_wall_s": t["fit_wall_s"],
        "epoch_s": t["fit_cpu_s"] / epochs,  # CPU time: the reported figure
        "epoch_wall_s": t["fit_wall_s"] / epochs,
    }


def run_jobs(jobs: dict[str, Callable[[], dict]], max_workers: int = 2) -> dict[str, dict]:
    """Run callables (e.g. ``run_measured`` closures) on ``max_workers`` threads, in dict order.

    Once a job returns a non-zero ``returncode``, jobs not yet started are skipped (their result
    is ``{"returncode": None, "skipped": True}``).
    """
    results: dict[str, dict] = {}
    lock = threading.Lock()
    failed = threading.Event()

    def work(name):
        out = {"returncode": None, "skipped": True} if failed.is_set() else jobs[name]()
        if out.get("returncode") not in (0, None):
            failed.set()
        with lock:
            results[name] = out
        return out

    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        list(pool.map(work, jobs))
    return {name: results[name] for name in jobs}


def tail(path: Path, n: int = 25) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


# -- output ----------------------------------------------------------------------------------------
def to_jsonable(obj):
    """Numpy-free copy of ``obj``; non-finite floats become None."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_jsonable(obj), indent=1, allow_nan=False) + "\n")


def save_arrays(path: Path, arrays: dict[str, dict[str, dict[str, np.ndarray]]]) -> None:
    """Per-atom sigma / error for the plots: ``{method: {split: {"sigma":..., "error":...}}}``."""
    flat = {}
    for method, splits in arrays.items():
        for split, values in splits.items():
            for key, value in values.items():
                flat[f"{method}|{split}|{key}"] = np.asarray(value)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **flat)


def load_arrays(path: Path) -> dict:
    out: dict = {}
    with np.load(path) as data:
        for name in data.files:
            method, split, key = name.split("|")
            out.setdefault(method, {}).setdefault(split, {})[key] = data[name]
    return out


# -- one framework part: arguments and driver ------------------------------------------------------
RECALIBRATE_HELP = (
    "refit every head model's calibration (eip-calibrate, default settings) and re-run the "
    "calibration variants before evaluating: with --reuse, what a change to the calibration "
    "gives without retraining (training does not depend on it)"
)


def part_parser(description: str) -> argparse.ArgumentParser:
    """Arguments shared by ``mace_part`` and ``nequip_part``."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--data", type=Path, required=True, help="data folder (examples.benchmark.data)")
    p.add_argument("--out", type=Path, default=Path("benchmark_out"))
    p.add_argument("--quick", action="store_true", help="tiny models, 2 epochs")
    p.add_argument("--epochs", type=int, default=None, help="override the number of epochs")
    p.add_argument("--jobs", type=int, default=2, help="trainings run at the same time")
    p.add_argument("--members", type=int, default=None, help="ensemble size (default 4)")
    p.add_argument("--reuse", action="store_true", help="reuse models already trained in --out")
    p.add_argument("--recalibrate", action="store_true", help=RECALIBRATE_HELP)
    p.add_argument("--seeds", type=int, default=1, help="independent runs of every method")
    p.add_argument("--heads", default=None, help="comma-separated subset of the heads")
    p.add_argument("--backbone", default=None, help="backbone variant (the part's BACKBONES)")
    return p


def part_settings(parser: argparse.ArgumentParser, args, settings):
    """Resolve paths, set up logging/threads and apply --epochs / --members to ``settings``."""
    args.data, args.out = args.data.resolve(), args.out.resolve()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if args.epochs is not None:
        settings = dataclasses.replace(settings, epochs=args.epochs)
    if args.members is not None:
        if args.members < 2:
            parser.error("--members: an ensemble needs at least 2 members")
        settings = dataclasses.replace(settings, members=args.members)
    if args.seeds < 1:
        parser.error(f"--seeds: invalid value {args.seeds}, must be >= 1")
    if args.heads is not None:
        heads = tuple(h for h in args.heads.split(",") if h)
        unknown = sorted(set(heads) - set(settings.heads))
        if unknown or not heads:
            parser.error(f"--heads: {args.heads!r}, choose from {list(settings.heads)}")
        settings = dataclasses.replace(settings, heads=heads)
    if args.backbone is not None:
        settings = dataclasses.replace(settings, backbone=args.backbone)
    return settings


def run_head_tool(
    tool: str, framework: str, model, data: Path, output: Path, flags: list[str], log: Path
) -> dict:
    """``eip-attach`` / ``eip-calibrate <framework>`` on ``model`` with the benchmark's train and
    validation files, single-threaded; wall time and peak RSS. RuntimeError with the log's tail
    if it fails."""
    cmd = [
        Path(sys.executable).parent / tool,
        framework,
        f"--model={model}",
        f"--train_file={data / 'train.xyz'}",
        f"--valid_file={data / 'valid.xyz'}",
        f"--output={output}",
        *flags,
    ]
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    log.parent.mkdir(parents=True, exist_ok=True)
    result = run_measured(cmd, log, env=env, cwd=log.parent)
    if result["returncode"] != 0:
        raise RuntimeError(f"{tool} {framework} failed; log {log}:\n{tail(log)}")
    return result


ATTACHED = "e2ip_attached"  # an e2ip head given to the plain model by eip-attach (frozen backbone)


def attach_to_plain(
    framework: str, plain_model: str, data: Path, workdir: Path, output_name: str, settings, reuse
) -> dict:
    """``eip-attach <framework>`` on the plain model (ensemble member 0): the use case "I
    already have a trained model". Returns the output model, wall time, peak RSS and report."""
    out, report = workdir / output_name, workdir / "attach_report.json"
    cost_file = workdir / "cost.json"
    if not (reuse and out.exists() and report.exists() and cost_file.exists()):
        flags = ["--head=e2ip", f"--max_epochs={settings.attach_epochs}", f"--report={report}"]
        result = run_head_tool(
            "eip-attach", framework, plain_model, data, out, flags, workdir / "attach.log"
        )
        write_json(cost_file, result)
    cost = json.loads(cost_file.read_text())
    return {
        "model": str(out),
        "wall_s": cost["wall_s"],
        "peak_rss_mb": cost["peak_rss_mb"],
        "report": json.loads(report.read_text()),
    }


# e2ip trained with its framework's CLI, refitted by `eip-calibrate` with other settings
CALIBRATION_VARIANTS = {
    # the head before issue 11: nothing fitted after training
    "e2ip_as_trained": ["--no_density", "--no_output_range", "--recalibrate=none"],
    "e2ip_recal_only": ["--no_density"],  # recalibration without the feature density
    "e2ip_p1": ["--density_power=1"],  # SPEC §1c's form: variance x (1 + r^2)
    "e2ip_ce": ["--recalibrate=ce"],  # the scale fitted on CE instead of NLL
    "e2ip_unbounded": ["--no_output_range"],  # the learned outputs extrapolate (before 2026-12-01)
    # the per-element Gaussian distance alone, without the stored training atoms (the default
    # before 2026-12-07)
    "e2ip_gaussian": ["--density_neighbours=0"],
    # the epistemic variance grows with the distance without end (the default before 2026-12-08)
    "e2ip_no_prior": ["--force_prior=0"],
}


def recalibrated(framework: str, models: dict, data: Path, suffix: str) -> dict:
    """``models`` with every head model (all but ``plain`` and ``ensemble``) replaced by its
    refit by ``eip-calibrate <framework>`` with the default settings, written beside it as
    ``<stem>_recalibrated<suffix>`` (the model file itself is kept)."""
    out = dict(models)
    for method, paths in models.items():
        if method in ("plain", "ensemble"):
            continue
        source = Path(paths[0])
        target = source.with_name(f"{source.stem}_recalibrated{suffix}")
        log = source.parent / f"{source.stem}_recalibrate.log"
        LOG.info("%s: eip-calibrate %s -> %s", framework, source, target.name)
        run_head_tool("eip-calibrate", framework, source, data, target, [], log)
        out[method] = [str(target)]
    return out


def calibration_variants(
    framework: str, e2ip_model: str, data: Path, workdir: Path, suffix: str, reuse: bool
) -> dict[str, str]:
    """``eip-calibrate <framework>`` on the trained e2ip model, once per variant (``reuse``: a
    variant already written is kept)."""
    out = {}
    for name, flags in CALIBRATION_VARIANTS.items():
        path = workdir / f"{name}{suffix}"
        if not (reuse and path.exists()):
            log = workdir / f"{name}.log"
            run_head_tool("eip-calibrate", framework, e2ip_model, data, path, flags, log)
        out[name] = str(path)
    return out


_CALIBRATION_LINE = re.compile(r"uncertainty calibration: (.*)\(([0-9.]+) s\)")
_STATISTICS_SECONDS = re.compile(r"'seconds': ([0-9.]+)")


def calibration_seconds(log: Path) -> dict[str, float]:
    """Wall times (s) of the first calibration logged in ``log``: ``total`` (statistics pass,
    recalibration and the before/after report) and ``statistics`` (the pass over the training
    set alone); NaN where the log has none."""
    out = {"total": float("nan"), "statistics": float("nan")}
    if log.exists():
        match = _CALIBRATION_LINE.search(log.read_text(errors="replace"))
        if match:
            out["total"] = float(match.group(2))
            stats = _STATISTICS_SECONDS.search(match.group(1))
            if stats:
                out["statistics"] = float(stats.group(1))
    return out


def without_distance_term(model) -> object:
    """A copy of an eager model whose head skips the feature-distance computation (r = 0): the
    same model "without the distance term", for the interleaved cost comparison."""
    import copy
    import types

    import torch

    clone = copy.deepcopy(model)
    for module in clone.modules():
        if isinstance(module, torch.jit.ScriptModule) and hasattr(module, "density"):
            raise ValueError("without_distance_term needs an eager head, not a TorchScript one")
        if hasattr(module, "distance_and_features") and hasattr(module, "density"):
            module.distance_and_features = types.MethodType(_zero_distance, module)
    return clone


def _zero_distance(head, feats, species, edge_index, edge_vectors):
    """``HeadBase.distance_and_features`` without the distance: r^2 = 0, the same features."""
    return feats.new_zeros(feats.shape[0]), head.head_features(feats, edge_index, edge_vectors)


def seed_settings(settings, k: int):
    """Settings of the k-th independent run: seeds s + k M (plain model and heads) to
    s + k M + M - 1 (the ensemble's other members), disjoint from every other run's."""
    return dataclasses.replace(settings, seed=settings.seed + k * settings.members)


def train_and_attach(framework: str, args, settings, heads, part, work: Path):
    """Train every method of one run into ``work`` and attach e2ip to its plain model;
    returns (costs, models, attach)."""
    costs = part.train_all(args.data, work, settings, args.jobs, args.reuse)
    models = {
        "plain": [costs["plain_0"]["model"]],
        "ensemble": [costs[f"plain_{k}"]["model"] for k in range(settings.members)],
        **{h: [costs[h]["model"]] for h in heads},
        # heads trained with another force objective (OBJECTIVE_VARIANTS of the part)
        **{v: [costs[v]["model"]] for v in part.OBJECTIVE_VARIANTS if v in costs},
    }
    attach = attach_to_plain(
        framework,
        models["plain"][0],
        args.data,
        work / ATTACHED,
        part.ATTACHED_FILE,
        settings,
        args.reuse,
    )
    models[ATTACHED] = [attach["model"]]
    if getattr(args, "recalibrate", False):
        models = recalibrated(framework, models, args.data, part.MODEL_SUFFIX)
    return costs, models, attach


def aggregate_seeds(per_seed: list[dict]) -> tuple[dict, dict]:
    """Mean and sample standard deviation (ddof 1; None for one run) of every numeric metric
    over the runs that have it (method -> split -> name); other values from the first run."""
    mean, std = {}, {}
    for method, splits in per_seed[0].items():
        mean[method], std[method] = {}, {}
        for split, row in splits.items():
            mean[method][split], std[method][split] = {}, {}
            for key, value in row.items():
                values = [
                    run[method][split][key]
                    for run in per_seed
                    if key in run.get(method, {}).get(split, {})
                ]
                numeric = all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
                )
                if not numeric:
                    mean[method][split][key] = value
                    continue
                array = np.asarray(values, dtype=float)
                mean[method][split][key] = float(array.mean())
                std[method][split][key] = float(array.std(ddof=1)) if len(array) > 1 else None
    return mean, std


def run_part(framework: str, args, settings, heads, part, notes: list[str]) -> dict:
    """Train, evaluate and time one framework's methods; write ``results.json``/``arrays.npz``.

    ``part``: the framework module, with ``train_all``, ``evaluate_all``, ``time_inference``,
    ``ATTACHED_FILE`` (the file name ``eip-attach`` writes) and ``OBJECTIVE_VARIANTS``.

    With ``args.seeds`` = N > 1 every method is trained N times (:func:`seed_settings`) and its
    metrics are the mean over the runs (``metrics``), with their standard deviation
    (``metrics_std``) and every run's values (``metrics_per_seed``). Costs, inference timing,
    per-atom arrays (figures) and the calibration variants come from the first run; the
    training-time ratios to plain also from every run (:func:`add_ratios_over_runs`).
    """
    out = args.out / framework
    t0 = time.perf_counter()
    costs, models, attach = train_and_attach(framework, args, settings, heads, part, out / "models")
    if "e2ip" in heads:
        variants = calibration_variants(
            framework,
            models["e2ip"][0],
            args.data,
            out / "models" / "calibration_variants",
            part.MODEL_SUFFIX,
            args.reuse and not getattr(args, "recalibrate", False),
        )
        models.update({name: [path] for name, path in variants.items()})
    t_train = time.perf_counter() - t0
    metrics, arrays = part.evaluate_all(args.data, models)
    t_eval = time.perf_counter() - t0 - t_train
    timings = part.time_inference(args.data, models, settings)
    per_seed, seeds, costs_per_seed = [metrics], [settings.seed], [costs]
    for k in range(1, args.seeds):
        run_settings = seed_settings(settings, k)
        LOG.info("%s: run %d of %d (seed %d)", framework, k + 1, args.seeds, run_settings.seed)
        run_costs, run_models, _ = train_and_attach(
            framework, args, run_settings, heads, part, out / "models" / f"seed{k}"
        )
        per_seed.append(part.evaluate_all(args.data, run_models)[0])
        seeds.append(run_settings.seed)
        costs_per_seed.append(run_costs)
    metrics, metrics_std = aggregate_seeds(per_seed)
    variants = [v for v in part.OBJECTIVE_VARIANTS if v in costs]
    per_run = [training_costs(c, [*heads, *variants], settings.members) for c in costs_per_seed]
    training = per_run[0]  # the first run's epoch times, with every run's ratios added
    add_ratios_over_runs(training, per_run)
    for head in heads:  # the end-of-training calibration against one epoch
        seconds = calibration_seconds(Path(costs[head]["model"]).parent / part.TRAIN_LOG)
        epoch_wall = training[head]["epoch_wall_s"]
        training[head]["calibration_s"] = seconds["total"]
        training[head]["calibration_to_epoch"] = seconds["total"] / epoch_wall
        training[head]["statistics_s"] = seconds["statistics"]
        training[head]["statistics_to_epoch"] = seconds["statistics"] / epoch_wall
    training[ATTACHED] = {"attach_wall_s": attach["wall_s"], "peak_rss_mb": attach["peak_rss_mb"]}
    result = {
        "framework": framework,
        "settings": dataclasses.asdict(settings),
        "data": str(args.data),
        "methods": {m: {"models": models[m]} for m in models},
        "seeds": seeds,
        "metrics": metrics,
        "metrics_std": metrics_std,
        "metrics_per_seed": per_seed,
        "training": training,
        "training_runs": costs,
        "attach": attach,
        "inference": timings,
        "wall_s": {"train": t_train, "evaluate": t_eval, "total": time.perf_counter() - t0},
        "notes": [
            "plain = ensemble member 0 (same seed as the heads)",
            f"{ATTACHED} = eip-attach e2ip on the plain model (frozen backbone, head only)",
            *notes,
            "ensemble predictive: Gaussian, committee sample covariance (M-1) + "
            f"{ENSEMBLE_JITTER:g} (eV/A)^2 I; sigma_i = sqrt(tr(cov)/3)",
            "e2ip_nll: e2ip trained with the papers' force objective (the evidential NLL trains "
            "the model); every other head uses the default, detached (the framework's own "
            "energy/force loss trains the model, the NLL the head only)",
            "e2ip_* calibration variants: the trained e2ip model refitted by eip-calibrate "
            + str(CALIBRATION_VARIANTS),
            "mve_density: mve's covariance scaled by (1 + r^4) in the evaluation",
        ],
    }
    write_json(out / "results.json", result)
    save_arrays(out / "arrays.npz", arrays)
    LOG.info("%s part done in %.0f s -> %s", framework, time.perf_counter() - t0, out)
    return result
