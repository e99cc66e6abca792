"""NequIP part of the benchmark (runs in ``.venv-nequip``; ``python -m examples.benchmark`` calls it).

Trains, through NequIP's own ``nequip-train`` (subprocess), on the same data, architecture and
epochs: four plain NequIP models (``examples/benchmark/nequip_configs/plain.yaml``, seeds s..s+3;
the deep ensemble, member 0 is also "plain") and one model per head with the project's
``eip_plugins/nequip/configs/config_with_eip.yaml`` (``++head=e2ip|eip|mve``, seed s). Then evaluates every method
on every test split and times inference, interleaved.

    .venv-nequip/bin/python -m examples.benchmark.nequip_part --data DIR --out DIR [--quick]

Writes ``DIR/nequip/results.json`` and ``DIR/nequip/arrays.npz``.
"""

from __future__ import annotations

import logging
import re
import sys
import types
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from examples.benchmark import common
from examples.benchmark.data import read_split

LOG = logging.getLogger("benchmark.nequip")
PLAIN_CONFIG_DIR = Path(__file__).resolve().parent / "nequip_configs"
HEADS = ("e2ip", "eip", "mve")
ATTACHED_FILE = "e2ip_attached.ckpt"
MODEL_SUFFIX = ".ckpt"  # what eip-calibrate writes for the calibration variants
TRAIN_LOG = "train.log"  # nequip-train's log (the calibration callback logs there)


# backbone variants (--backbone): NequIP l_max = 1 (the main tables), NequIP l_max = 0 (scalar
# features only) and Allegro (nequip-allegro: per-edge latents); the last two heads build
# geometric features. Plain Allegro models use nequip_configs/plain_allegro.yaml, heads
# config_with_eip's backbone=allegro.
BACKBONES = ("nequip_l1", "nequip_lmax0", "allegro")


@dataclass(frozen=True)
class NequipSettings:
    """Architecture and training budget, the same for every method."""

    backbone: str = "nequip_l1"
    num_layers: int = 3
    num_features: int = 16
    l_max: int = 1
    cutoff_radius: float = 4.0
    epochs: int = 80  # the convergence study's largest budget (README "Training budget")
    batch_size: int = 8
    lr: float = 0.005
    seed: int = 1
    members: int = 4  # deep-ensemble size
    heads: tuple[str, ...] = HEADS
    timing_structures: int = 20
    timing_rounds: int = 10
    attach_epochs: int = 200  # eip-attach head epochs (early stopping on the validation NLL)


DEFAULT = NequipSettings()  # the full run's settings
QUICK = NequipSettings(
    num_layers=2,
    num_features=8,
    epochs=2,
    batch_size=4,
    timing_structures=6,
    timing_rounds=3,
    attach_epochs=3,
)


# the same head trained with the papers' force objective (the evidential NLL trains the model),
# against the default (detached: NequIP's energy/force MSE trains the model, the NLL the head)
OBJECTIVE_VARIANTS = {"e2ip_nll": ("e2ip", ["++head_options.force_objective=nll"])}


def train_command(
    head: str, seed: int, data: Path, workdir: Path, s: NequipSettings, e0s, extra=()
):
    """``nequip-train`` argument list (the project's config for heads, plain.yaml otherwise)."""
    exe = Path(sys.executable).parent / "nequip-train"
    types = sorted(e0s)
    shifts = "{" + ",".join(f"{t}:{e0s[t]:.8f}" for t in types) + "}"
    allegro = s.backbone == "allegro"
    if head == "none":
        config = ["-cp", str(PLAIN_CONFIG_DIR), "-cn", "plain_allegro" if allegro else "plain"]
    else:  # the config shipped with eip-plugins
        config = ["-cn", "config_with_eip", f"++head={head}"]
        config += ["backbone=allegro"] if allegro else []
    width = (
        [f"++training_module.model.num_scalar_features={2 * s.num_features}"]
        if allegro
        else [f"++training_module.model.num_features={s.num_features}"]
    )
    l_max = 0 if s.backbone == "nequip_lmax0" else s.l_max
    return [
        str(exe),
        *config,
        f"++train_file={data / 'train.xyz'}",
        f"++val_file={data / 'valid.xyz'}",
        f"++test_file={data / 'test_300K.xyz'}",
        f"++model_type_names=[{','.join(types)}]",
        "++run=[train]",
        f"++max_epochs={s.epochs}",
        f"++seed={seed}",
        f"++batch_size={s.batch_size}",
        f"++cutoff_radius={s.cutoff_radius}",
        f"++training_module.optimizer.lr={s.lr}",
        f"++training_module.model.num_layers={s.num_layers}",
        *width,
        f"++training_module.model.l_max={l_max}",
        # least-squares per-element energies of the training set (MACE's --E0s=average)
        f"++training_module.model.per_type_energy_shifts={shifts}",
        f"hydra.run.dir={workdir}",
        *extra,
    ]


def fit_e0s(frames) -> dict[str, float]:
    """Per-element reference energies (eV) by least squares over the training compositions."""
    symbols = sorted({s for f in frames for s in f.get_chemical_symbols()})
    counts = np.array([[f.get_chemical_symbols().count(s) for s in symbols] for f in frames])
    energies = np.array([f.info["REF_energy"] for f in frames])
    e0, *_ = np.linalg.lstsq(counts.astype(float), energies, rcond=None)
    return {s: float(e) for s, e in zip(symbols, e0, strict=True)}


def training_jobs(s: NequipSettings) -> dict[str, tuple[str, int, list[str]]]:
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


_STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+)\]")


def fit_seconds(log: Path) -> float:
    """Wall time of the training loop: "TRAIN RUN START" to "TRAIN RUN END" in train.log."""
    start = end = None
    for line in log.read_text(errors="replace").splitlines():
        m = _STAMP.match(line)
        if not m:
            continue
        stamp = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
        if "TRAIN RUN START" in line:
            start = stamp
        elif "TRAIN RUN END" in line:
            end = stamp
    if start is None or end is None:
        return float("nan")
    return (end - start).total_seconds()


def trained_model(workdir: Path) -> Path:
    """The model file a training in ``workdir`` writes (nequip-train's best checkpoint)."""
    return workdir / "best.ckpt"


def train_all(data: Path, work: Path, s: NequipSettings, jobs: int, reuse: bool) -> dict:
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    e0s = fit_e0s(read_split(data, "train"))
    specs = {
        name: (
            work / name,
            train_command(head, seed, data, work / name, s, e0s, flags),
            trained_model(work / name),
        )
        for name, (head, seed, flags) in training_jobs(s).items()
    }
    costs = common.train_models("nequip", specs, env, "stdout.log", jobs, reuse)
    for name, cost in costs.items():
        workdir = work / name
        cost.update(
            epochs=s.epochs,
            log_fit_wall_s=fit_seconds(workdir / "train.log"),  # from nequip-train's own log
            **common.fit_costs(workdir, s.epochs),
        )
    return costs


# -- evaluation ------------------------------------------------------------------------------------
def _calc_plain(path: str):
    from nequip.integrations.ase import NequIPCalculator

    # NequIPCalculator has no public checkpoint loader in nequip 0.19 (only from_compiled_model,
    # which needs an AOTInductor compile of minutes on CPU); _from_saved_model is what it uses.
    return NequIPCalculator._from_saved_model(
        path, device="cpu", chemical_species_to_atom_type_map=True
    )


def _calc_head(path: str, torchscript_head: bool = True):
    from eip_plugins.nequip import NequIPUQCalculator

    return NequIPUQCalculator.from_saved_model(
        path, device="cpu", torchscript_head=torchscript_head
    )


def force_calculator(path: str, plain: bool):
    """The ASE calculator of one model file: NequIP's own for a plain model."""
    return _calc_plain(path) if plain else _calc_head(path)


def _predict(calcs, frames, method: str) -> list[dict]:
    """One row per frame. ``calcs``: one calculator, or the ensemble members' list."""
    rows = []
    for frame in frames:
        if method == "ensemble":
            comm = []
            for calc in calcs:
                atoms = frame.copy()
                atoms.calc = calc
                comm.append(np.array(atoms.get_forces()))
            row = {"forces_ref": frame.arrays["REF_forces"]}
            row.update(common.ensemble_row(np.stack(comm)))
        else:
            atoms = frame.copy()
            atoms.calc = calcs
            forces = atoms.get_forces()
            row = common.head_row(calcs.results, forces, frame.arrays["REF_forces"], method)
        rows.append(row)
    return rows


def evaluate_all(data: Path, models: dict[str, list[str]]) -> tuple[dict, dict]:
    """Metrics per method and split (:func:`common.evaluate_splits`)."""
    calcs: dict = {"ensemble": [_calc_plain(p) for p in models["ensemble"]]}
    calcs.update({m: _calc_head(p[0]) for m, p in models.items() if m not in ("plain", "ensemble")})
    calcs.update({m: None for m, (source, _) in common.DERIVED.items() if source in calcs})
    return common.evaluate_splits(data, calcs, _predict, LOG)


# -- timing ----------------------------------------------------------------------------------------
def time_inference(data: Path, models: dict[str, list[str]], s: NequipSettings) -> dict:
    """Per-structure inference time, interleaved rounds, medians and ratios.

    ``model``: the torch model(s) on pre-built, shared input graphs, as the calculators run them
    (a head as TorchScript). ``calculator``: ASE end to
    end (NequIPCalculator per member for the ensemble, NequIPUQCalculator for heads).
    """
    from ase.calculators.calculator import all_changes

    frames = common.timing_frames(data, s.timing_structures)
    calcs = {"plain": [_calc_plain(models["plain"][0])]}
    calcs["ensemble"] = [_calc_plain(p) for p in models["ensemble"]]
    timed = [m for m in (*HEADS, common.ATTACHED) if m in models]
    calcs.update({m: [_calc_head(models[m][0])] for m in timed})
    graphs = [calcs["plain"][0].atoms_to_data(f.copy()) for f in frames]

    def model_fn(cs):
        nets = [c.model for c in cs]

        def run():
            for g in graphs:
                for net in nets:
                    net(dict(g))

        return run

    atoms_list = [f.copy() for f in frames]

    def calc_fn(cs):
        def run():
            for atoms in atoms_list:
                for c in cs:
                    c.calculate(atoms, ["energy", "forces"], all_changes)

        return run

    funcs = {f"model:{m}": model_fn(c) for m, c in calcs.items()}
    funcs.update({f"calculator:{m}": calc_fn(c) for m, c in calcs.items()})
    LOG.info("timing %d structures x %d rounds", len(frames), s.timing_rounds)
    raw = common.interleaved_timings(funcs, rounds=s.timing_rounds)
    timings = common.summarize_timings(raw, len(frames), list(calcs))
    if "e2ip" in calcs:  # the eager e2ip model against itself with the distance term skipped
        eager = _calc_head(models["e2ip"][0], torchscript_head=False)
        net = common.without_distance_term(eager.model)
        timings["distance_term"] = common.distance_term_cost(
            model_fn([eager]),
            model_fn([types.SimpleNamespace(model=net)]),
            3 * s.timing_rounds,
        )
    return timings


def main(argv: list[str] | None = None) -> dict:
    parser = common.part_parser(__doc__.split("\n\n")[0])
    args = parser.parse_args(argv)
    settings = common.part_settings(parser, args, QUICK if args.quick else NequipSettings())
    if settings.backbone not in BACKBONES:
        parser.error(f"--backbone: {settings.backbone!r}, choose from {list(BACKBONES)}")
    notes = [
        f"backbone {settings.backbone}",
        "training epoch time = nequip-train fit loop wall time / epochs (validation incl.)",
        "models evaluated in their training precision (float32)",
    ]
    return common.run_part("nequip", args, settings, settings.heads, sys.modules[__name__], notes)


if __name__ == "__main__":
    main()
