"""MACE part of the benchmark (runs in ``.venv-mace``; ``python -m examples.benchmark`` calls it).

Trains, through MACE's own ``mace_run_train`` (subprocess), on the same data, architecture and
epochs: four plain MACE models with seeds s, s+1, s+2, s+3 (the deep ensemble; the seed-s
member is also "plain") and one model per head ``--head=e2ip``, ``--head=eip``, ``--head=mve``
(seed s). Then evaluates every method on every test split and times inference, interleaved.

    .venv-mace/bin/python -m examples.benchmark.mace_part --data DIR --out DIR [--quick]

Writes ``DIR/mace/results.json`` and ``DIR/mace/arrays.npz`` (per-atom sigma and error).
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from examples.benchmark import common

LOG = logging.getLogger("benchmark.mace")
HEADS = ("e2ip", "eip", "mve")
ATTACHED_FILE = "e2ip_attached.model"
MODEL_SUFFIX = ".model"  # what eip-calibrate writes for the calibration variants
TRAIN_LOG = "train.log"  # the training command's output (the calibration is logged there)


# backbone variants (--backbone): the L = 1 model of the main tables, and MACE's scalar-only
# configuration (hidden irreps '16x0e', as --max_L=0), whose head builds geometric features
BACKBONES = ("mace_l1", "mace_scalar")


@dataclass(frozen=True)
class MaceSettings:
    """Architecture and training budget, the same for every method (heads add only the head)."""

    backbone: str = "mace_l1"
    hidden_irreps: str = "16x0e+16x1o"
    r_max: float = 4.0
    num_interactions: int = 2
    correlation: int = 2
    max_ell: int = 1
    num_radial_basis: int = 8
    epochs: int = 80  # the convergence study's largest budget (README "Training budget")
    batch_size: int = 8
    lr: float = 0.01
    dtype: str = "float32"  # training precision; evaluation casts every model to float64
    seed: int = 1
    members: int = 4  # deep-ensemble size
    timing_structures: int = 20
    timing_rounds: int = 10
    attach_epochs: int = 200  # eip-attach head epochs (early stopping on the validation NLL)
    heads: tuple[str, ...] = HEADS

    @property
    def node_irreps(self) -> str:
        """``--hidden_irreps`` of the backbone variant: scalars only for ``mace_scalar``."""
        if self.backbone == "mace_scalar":
            return self.hidden_irreps.split("+")[0]
        return self.hidden_irreps


DEFAULT = MaceSettings()  # the full run's settings
QUICK = MaceSettings(
    hidden_irreps="8x0e+8x1o",
    num_radial_basis=6,
    epochs=2,
    batch_size=4,
    timing_structures=6,
    timing_rounds=3,
    attach_epochs=3,
)


# the same head trained with the papers' force objective (the evidential NLL trains the model),
# against the default (detached: MACE's own loss trains the model, the NLL the head)
OBJECTIVE_VARIANTS = {"e2ip_nll": ("e2ip", ["--eip_force_objective=nll"])}


def train_command(
    name: str, head: str, seed: int, data: Path, workdir: Path, s: MaceSettings, extra=()
):
    """``mace_run_train`` argument list; every flag except ``--head``/``--eip_*`` is plain MACE."""
    exe = Path(sys.executable).parent / "mace_run_train"
    cmd = [
        str(exe),
        f"--name={name}",
        f"--train_file={data / 'train.xyz'}",
        f"--valid_file={data / 'valid.xyz'}",
        "--energy_key=REF_energy",
        "--forces_key=REF_forces",
        "--E0s=average",
        "--model=MACE",
        f"--hidden_irreps={s.node_irreps}",
        f"--r_max={s.r_max}",
        f"--num_interactions={s.num_interactions}",
        f"--correlation={s.correlation}",
        f"--max_ell={s.max_ell}",
        f"--num_radial_basis={s.num_radial_basis}",
        f"--batch_size={s.batch_size}",
        f"--valid_batch_size={4 * s.batch_size}",
        f"--max_num_epochs={s.epochs}",
        f"--lr={s.lr}",
        "--ema",
        f"--default_dtype={s.dtype}",
        "--device=cpu",
        f"--seed={seed}",
        "--plot=False",
        "--num_workers=0",
        f"--model_dir={workdir}",
        f"--checkpoints_dir={workdir / 'checkpoints'}",
        f"--results_dir={workdir / 'results'}",
        f"--log_dir={workdir / 'logs'}",
        f"--work_dir={workdir}",
    ]
    if head != "none":
        cmd.append(f"--head={head}")
    return cmd + list(extra)


def training_jobs(s: MaceSettings) -> dict[str, tuple[str, int, list[str]]]:
    """job name -> (head, seed, extra flags). ``plain_0`` is both "plain" and ensemble member 0."""
    jobs = {"plain_0": ("none", s.seed, [])}
    jobs.update({h: (h, s.seed, []) for h in s.heads})
    jobs.update(
        {
            name: (head, s.seed, flags)
            for name, (head, flags) in OBJECTIVE_VARIANTS.items()
            if head in s.heads
        }
    )
    jobs.update({f"plain_{k}": ("none", s.seed + k, []) for k in range(1, s.members)})
    return jobs


def epoch_times(results_dir: Path) -> list[float]:
    """Per-epoch optimisation time (s) from MACE's ``*_train.txt``: sum of the epoch's step
    times (``mode == "opt"``), validation excluded."""
    per_epoch: dict[int, float] = {}
    for path in sorted(results_dir.glob("*_train.txt")):
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row.get("mode") == "opt" and row.get("epoch") is not None:
                per_epoch[int(row["epoch"])] = per_epoch.get(int(row["epoch"]), 0.0) + float(
                    row["time"]
                )
    return [per_epoch[e] for e in sorted(per_epoch)]


def trained_model(workdir: Path) -> Path:
    """The model file a training in ``workdir`` writes (mace_run_train's ``--name`` is the
    folder's name)."""
    return workdir / f"{workdir.name}.model"


def train_all(data: Path, work: Path, s: MaceSettings, jobs: int, reuse: bool) -> dict:
    """Train every model (``jobs`` at a time, OMP_NUM_THREADS=1 each); returns costs per job."""
    env = {
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONWARNINGS": "ignore",
        "EIP_PLUGINS_DISABLE": None,  # the --head hook must be active
    }
    specs = {
        name: (
            work / name,
            train_command(name, head, seed, data, work / name, s, flags),
            trained_model(work / name),
        )
        for name, (head, seed, flags) in training_jobs(s).items()
    }
    costs = common.train_models("mace", specs, env, "train.log", jobs, reuse)
    for name, cost in costs.items():
        workdir = work / name
        times = epoch_times(workdir / "results")
        cost.update(
            epochs=len(times) or s.epochs,
            # wall time of each epoch's optimiser steps, from MACE's own results file
            step_wall_s_per_epoch=times,
            **common.fit_costs(workdir, len(times) or s.epochs),
        )
    return costs


# -- evaluation ------------------------------------------------------------------------------------
def _calc_plain(paths: list[str]):
    from mace.calculators import MACECalculator

    return MACECalculator(model_paths=paths, device="cpu", default_dtype="float64")


def _calc_head(path: str):
    from eip_plugins.mace import MACEUQCalculator

    return MACEUQCalculator(model_paths=path, device="cpu", default_dtype="float64")


def force_calculator(path: str, plain: bool):
    """The ASE calculator of one model file: MACE's own for a plain model."""
    return _calc_plain([path]) if plain else _calc_head(path)


def _predict(calc, frames, method: str) -> list[dict]:
    """One row per frame: forces, reference, and per method sigma / covariance / raw fields."""
    rows = []
    for frame in frames:
        atoms = frame.copy()
        atoms.calc = calc
        forces = atoms.get_forces()
        if method == "ensemble":
            row = {"forces": np.array(forces), "forces_ref": frame.arrays["REF_forces"]}
            row.update(common.ensemble_row(np.asarray(calc.results["forces_comm"])))
        else:
            row = common.head_row(calc.results, forces, frame.arrays["REF_forces"], method)
        rows.append(row)
    return rows


def evaluate_all(data: Path, models: dict[str, list[str]]) -> tuple[dict, dict]:
    """Metrics per method and split (:func:`common.evaluate_splits`)."""
    calcs = {"ensemble": _calc_plain(models["ensemble"])}
    calcs.update({m: _calc_head(p[0]) for m, p in models.items() if m not in ("plain", "ensemble")})
    calcs.update({m: None for m, (source, _) in common.DERIVED.items() if source in calcs})
    return common.evaluate_splits(data, calcs, _predict, LOG)


# -- timing ----------------------------------------------------------------------------------------
def _mace_batches(frames, model) -> list[dict]:
    from mace import data as mace_data
    from mace.tools import torch_geometric, utils

    z_table = utils.AtomicNumberTable(sorted(int(z) for z in model.atomic_numbers))
    heads = list(getattr(model, "heads", ["Default"]))
    batches = []
    for atoms in frames:
        config = mace_data.config_from_atoms(atoms, head_name=heads[-1])
        graph = mace_data.AtomicData.from_config(
            config, z_table=z_table, cutoff=float(model.r_max), heads=heads
        )
        loader = torch_geometric.dataloader.DataLoader([graph], batch_size=1, shuffle=False)
        batch = next(iter(loader)).to_dict()
        batches.append(
            {
                k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v
                for k, v in batch.items()
            }
        )
    return batches


def inference_models(models: dict[str, list[str]], torchscript_head: bool = True) -> dict:
    """path -> torch model in float64 evaluation mode with frozen parameters, as the calculators
    run it: MACECalculator's plain model (``plain``, ``ensemble``), MACEUQCalculator's model
    with its head as TorchScript for the heads (``torchscript_head``)."""
    from eip_plugins.mace.calculator import MACEUQCalculator, load_model

    loaded = {}
    for method, paths in models.items():
        for p in paths:
            if method in ("plain", "ensemble"):
                net = load_model(p).double().eval()
                for param in net.parameters():
                    param.requires_grad_(False)
            else:
                net = MACEUQCalculator(p, torchscript_head=torchscript_head).model
            loaded[p] = net
    return loaded


def time_inference(data: Path, models: dict[str, list[str]], s: MaceSettings) -> dict:
    """Per-structure inference time of every method, interleaved rounds, medians and ratios.

    ``model``: forward + force backward of the torch model(s) on a pre-built graph (the graph is
    built once and shared, as MACECalculator does for a committee), each model as its
    calculator runs it (:func:`inference_models`: a head as TorchScript). ``calculator``: the ASE
    calculator end to end (MACECalculator for plain and ensemble, MACEUQCalculator for heads;
    note that MACECalculator always computes the stress as well).
    """
    from ase.calculators.calculator import all_changes

    frames = common.timing_frames(data, s.timing_structures)
    loaded = inference_models(models)
    batches = _mace_batches(frames, loaded[models["plain"][0]])

    def model_fn(paths):
        nets = [loaded[p] for p in paths]

        def run():
            for b in batches:
                for net in nets:
                    net(dict(b), training=False, compute_force=True, compute_stress=False)

        return run

    timed = {m: models[m] for m in ("plain", "ensemble", *HEADS, common.ATTACHED) if m in models}
    calcs = {"plain": _calc_plain(models["plain"]), "ensemble": _calc_plain(models["ensemble"])}
    calcs.update({m: _calc_head(p[0]) for m, p in timed.items() if m not in calcs})
    atoms_list = [f.copy() for f in frames]

    def calc_fn(calc):
        def run():
            for atoms in atoms_list:
                calc.calculate(atoms, ["energy", "forces"], all_changes)

        return run

    funcs = {f"model:{m}": model_fn(p) for m, p in timed.items()}
    funcs.update({f"calculator:{m}": calc_fn(c) for m, c in calcs.items()})
    LOG.info("timing %d structures x %d rounds", len(frames), s.timing_rounds)
    raw = common.interleaved_timings(funcs, rounds=s.timing_rounds)
    timings = common.summarize_timings(raw, len(frames), list(timed))
    if "e2ip" in timed:  # the eager e2ip model against itself with the distance term skipped
        eager = inference_models({"e2ip": timed["e2ip"]}, torchscript_head=False)
        loaded["e2ip_eager"] = eager[timed["e2ip"][0]]
        loaded["e2ip_no_distance"] = common.without_distance_term(loaded["e2ip_eager"])
        timings["distance_term"] = common.distance_term_cost(
            model_fn(["e2ip_eager"]), model_fn(["e2ip_no_distance"]), 3 * s.timing_rounds
        )
    return timings


def main(argv: list[str] | None = None) -> dict:
    parser = common.part_parser(__doc__.split("\n\n")[0])
    args = parser.parse_args(argv)
    settings = common.part_settings(parser, args, QUICK if args.quick else MaceSettings())
    if settings.backbone not in BACKBONES:
        parser.error(f"--backbone: {settings.backbone!r}, choose from {list(BACKBONES)}")
    # evaluation in float64 throughout (MACECalculator and MACEUQCalculator, default_dtype)
    torch.set_default_dtype(torch.float64)
    notes = [f"backbone {settings.backbone}: --hidden_irreps={settings.node_irreps}"]
    return common.run_part("mace", args, settings, settings.heads, sys.modules[__name__], notes)


if __name__ == "__main__":
    main()
