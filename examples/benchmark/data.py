"""GFN2-xTB labelled benchmark data: small C/H/O molecules and a periodic liquid-water box.

Splits (extxyz, ``REF_energy`` in ``atoms.info``, ``REF_forces`` in ``atoms.arrays``, eV and eV/A):

========================  ==========================================================================
``train.xyz``             training molecules at ``T`` (300 K) + water box at ``T``
``valid.xyz``             same mixture, independent walkers
``test_300K.xyz``         training molecules at ``T``: in distribution
``test_hot.xyz``          training molecules at ``T_hot`` (1200 K): out of distribution (temperature)
``test_unseen.xyz``       molecules never seen in training at ``T``: out of distribution (chemistry)
``water_300K.xyz``        water box at ``T``: in distribution, periodic
``water_hot.xyz``         water box at ``T_water_hot`` (600 K): out of distribution, periodic
``isolated_atom_energies.json``  GFN2-xTB energies (eV) of the free H, C, O atoms
``manifest.json``         the settings, their hash, per-split statistics and the generation time
========================  ==========================================================================

Molecules are sampled exactly as the shipped ethanol data (``examples/data/generate_dataset.py``,
whose functions are reused): gas-phase Langevin MD on the GFN2-xTB surface, 0.5 fs, friction
0.02/fs, independent walkers per molecule and split, frames ``stride`` steps apart after
``equil_steps`` steps of equilibration, frames with a failed SCF or a changed bond topology skipped.

The water box (``n_water`` H2O at 1 g/cm^3, cubic, periodic) is sampled by Langevin MD on the
periodic GFN2-xTB surface as well, but one periodic GFN2-xTB force call costs ~1-3 s (versus
~2 ms for a molecule), so the water walkers use deuterium masses and a 1 fs step. Masses do not
change the classical configurational (Boltzmann) distribution, only how fast it is explored; the
labels are plain GFN2-xTB energies and forces of the sampled positions.

Everything is cached under ``examples/benchmark/cache/<hash>/`` where ``<hash>`` is a content
hash of the :class:`DataSettings` (the same settings never generate twice).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.build import molecule
from ase.calculators.calculator import CalculationFailed
from ase.constraints import FixCom
from ase.io import read, write
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary

from examples.data import generate_dataset as gd

LOG = logging.getLogger("benchmark.data")
HERE = Path(__file__).resolve().parent
CACHE = HERE / "cache"
DATA_VERSION = 1  # bump when the generation code changes what a given setting produces
WATER_DENSITY = 1.0  # g/cm^3
AMU_PER_H2O = 18.015

TEST_SPLITS = ("test_300K", "test_hot", "test_unseen", "water_300K", "water_hot")


@dataclass(frozen=True)
class DataSettings:
    """Everything that determines the generated data (its hash names the cache folder).

    Frame counts are per molecule (molecular splits) or per split (water).
    Temperatures in K, times in fs, friction in 1/fs.
    """

    train_molecules: tuple[str, ...] = ("CH3CH2OH", "CH3OH", "HCOOH")
    unseen_molecules: tuple[str, ...] = ("CH3CHO", "CH3OCH3")
    temperature: float = 300.0
    hot_temperature: float = 1200.0
    n_train: int = 80  # per training molecule
    n_valid: int = 15
    n_test: int = 30
    n_hot: int = 30
    n_unseen: int = 30  # per unseen molecule
    equil_steps: int = 1000
    stride: int = 20
    walkers: int = 2
    # periodic water box
    water: bool = True
    n_water: int = 8
    water_hot_temperature: float = 600.0
    water_n_train: int = 20
    water_n_valid: int = 4
    water_n_test: int = 10
    water_n_hot: int = 10
    water_equil_steps: int = 60
    water_stride: int = 8
    water_timestep: float = 1.0
    water_friction: float = 0.05
    seed: int = 6000

    def to_json(self) -> dict:
        d = asdict(self)
        d["data_version"] = DATA_VERSION
        return d

    def digest(self) -> str:
        blob = json.dumps(self.to_json(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


QUICK_DATA = DataSettings(
    n_train=8,
    n_valid=2,
    n_test=4,
    n_hot=4,
    n_unseen=4,
    equil_steps=200,
    stride=5,
    walkers=1,
    water_n_train=3,
    water_n_valid=1,
    water_n_test=2,
    water_n_hot=2,
    water_equil_steps=3,
    water_stride=2,
)


# -- molecules -----------------------------------------------------------------------------------
def _molecule_split(
    name: str, mol: str, temp: float, n: int, seed: int, s: DataSettings
) -> list[Atoms]:
    split = gd.Split(f"{name}:{mol}", mol, temp, n, 0, f"{name}_{mol}_{temp:g}K")
    md = gd.MDSettings(equil_steps=s.equil_steps, stride=s.stride, walkers=s.walkers)
    return gd.sample_split(split, md, seed, show_progress=False)


# -- water box -----------------------------------------------------------------------------------
def water_box(n: int, rng: np.random.Generator) -> Atoms:
    """``n`` randomly oriented H2O on a cubic grid in a periodic cube at 1 g/cm^3 (A)."""
    length = (n * AMU_PER_H2O / (0.602214076 * WATER_DENSITY)) ** (1.0 / 3.0)
    side = int(np.ceil(n ** (1.0 / 3.0) - 1e-9))
    sites = [(i, j, k) for i in range(side) for j in range(side) for k in range(side)]
    chosen = rng.choice(len(sites), size=n, replace=False)
    box = Atoms(cell=np.eye(3) * length, pbc=True)
    for idx in sorted(chosen):
        w = molecule("H2O")
        w.rotate(rng.uniform(0.0, 360.0), rng.normal(size=3), center="COM")
        w.translate((np.asarray(sites[idx]) + 0.5) * length / side - w.get_center_of_mass())
        box += w
    return box


def _labelled_periodic(atoms: Atoms, config_type: str) -> Atoms:
    energy = float(atoms.get_potential_energy())
    forces = np.array(atoms.get_forces(apply_constraint=False), dtype=float)
    if not (np.isfinite(energy) and np.all(np.isfinite(forces))):
        raise CalculationFailed("non-finite energy or forces")
    frame = Atoms(
        symbols=atoms.get_chemical_symbols(),
        positions=atoms.get_positions(wrap=True),  # labels do not depend on wrapping
        cell=atoms.get_cell(),
        pbc=True,
    )
    frame.info["REF_energy"] = energy
    frame.info["config_type"] = config_type
    frame.arrays["REF_forces"] = forces
    return frame


def _water_split(name: str, temp: float, n: int, seed: int, s: DataSettings) -> list[Atoms]:
    """One Langevin walker on the periodic GFN2-xTB surface (deuterium masses, see module doc)."""
    if n <= 0:
        return []
    rng = np.random.default_rng(seed)
    config_type = f"{name}_water{s.n_water}_{temp:g}K"
    atoms = water_box(s.n_water, rng)
    reference = gd.bond_topology(atoms)
    masses = atoms.get_masses()
    masses[atoms.numbers == 1] = 2.014  # deuterium: 1 fs steps; same configurational ensemble
    atoms.set_masses(masses)
    atoms.calc = gd.make_calculator()
    atoms.set_constraint(FixCom())
    gd.thermalize_momenta(atoms, temp, rng=rng)
    Stationary(atoms)  # no ZeroRotation: angular momentum is not conserved in a periodic box
    dyn = Langevin(
        atoms,
        timestep=s.water_timestep * units.fs,
        temperature_K=temp,
        friction=s.water_friction / units.fs,
        fixcm=False,
        rng=rng,
    )
    LOG.info("%s: water box (%d H2O) at %g K, seed %d, %d frames", name, s.n_water, temp, seed, n)
    dyn.run(s.water_equil_steps)
    frames: list[Atoms] = []
    last = (atoms.get_positions(), atoms.get_momenta())
    failures = 0
    while len(frames) < n:
        try:
            dyn.run(s.water_stride)
            if gd.bond_topology(atoms) != reference:
                raise CalculationFailed("bonding topology changed (proton transfer)")
            frames.append(_labelled_periodic(atoms, config_type))
            last = (atoms.get_positions(), atoms.get_momenta())
        except CalculationFailed as err:
            failures += 1
            LOG.warning("%s: skipped a water frame (%s)", name, err)
            if failures > 20:
                raise RuntimeError(f"{name}: too many failed water frames") from err
            atoms.calc = gd.make_calculator()
            atoms.set_positions(last[0], apply_constraint=False)
            atoms.set_momenta(last[1], apply_constraint=False)
    return frames


# -- all splits ----------------------------------------------------------------------------------
def _plan(s: DataSettings) -> dict[str, list[tuple]]:
    """split -> list of (kind, molecule or None, temperature, n_frames) jobs."""
    t, hot = s.temperature, s.hot_temperature
    plan: dict[str, list[tuple]] = {
        "train": [("mol", m, t, s.n_train) for m in s.train_molecules],
        "valid": [("mol", m, t, s.n_valid) for m in s.train_molecules],
        "test_300K": [("mol", m, t, s.n_test) for m in s.train_molecules],
        "test_hot": [("mol", m, hot, s.n_hot) for m in s.train_molecules],
        "test_unseen": [("mol", m, t, s.n_unseen) for m in s.unseen_molecules],
        "water_300K": [],
        "water_hot": [],
    }
    if s.water:
        plan["train"].append(("water", None, t, s.water_n_train))
        plan["valid"].append(("water", None, t, s.water_n_valid))
        plan["water_300K"].append(("water", None, t, s.water_n_test))
        plan["water_hot"].append(("water", None, s.water_hot_temperature, s.water_n_hot))
    return plan


def _stats(frames: list[Atoms]) -> dict:
    if not frames:
        return {"frames": 0}
    forces = np.concatenate([f.arrays["REF_forces"] for f in frames])
    return {
        "frames": len(frames),
        "atoms": int(sum(len(f) for f in frames)),
        "rms_F": float(np.sqrt(np.mean(forces**2))),
        "mean_abs_F": float(np.linalg.norm(forces, axis=1).mean()),
        "periodic": bool(any(f.pbc.any() for f in frames)),
        "config_types": sorted({f.info["config_type"] for f in frames}),
    }


def _job_cost(job: tuple, s: DataSettings) -> float:
    """Rough cost of one generation job in force calls (a periodic water call ~1000 molecule calls)."""
    kind, _mol, _temp, n = job
    if kind == "water":
        return 1000.0 * (s.water_equil_steps + n * s.water_stride)
    return s.walkers * s.equil_steps + n * s.stride


def _run_job(job: tuple, seed: int, split: str, settings: DataSettings) -> list[Atoms]:
    kind, mol, temp, n = job
    if kind == "mol":
        return _molecule_split(split, mol, temp, n, seed, settings)
    return _water_split(split, temp, n, seed, settings)


def generate(settings: DataSettings, out: Path, jobs: int = 1) -> dict:
    """Generate every split of ``settings`` into ``out`` and return the manifest.

    Every (split, molecule) job has its own seed, so ``jobs`` worker processes give the same
    frames, bit for bit, as one: only the wall time changes. The costliest jobs (the periodic
    water walkers) are started first.
    """
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    manifest: dict = {"settings": settings.to_json(), "hash": settings.digest(), "splits": {}}
    plan = list(_plan(settings).items())
    tasks = [
        (split, job_index, job, settings.seed + 100 * split_index + job_index)
        for split_index, (split, split_jobs) in enumerate(plan)
        for job_index, job in enumerate(split_jobs)
    ]
    results: dict[tuple[str, int], list[Atoms]] = {}
    if jobs <= 1:
        for split, job_index, job, seed in tasks:
            results[split, job_index] = _run_job(job, seed, split, settings)
    else:
        tasks.sort(key=lambda t: -_job_cost(t[2], settings))
        with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("fork")) as pool:
            futures = {
                pool.submit(_run_job, job, seed, split, settings): (split, job_index)
                for split, job_index, job, seed in tasks
            }
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                LOG.info(
                    "%s job %d done (%.0f s so far)", *futures[future], time.perf_counter() - start
                )
    for split, split_jobs in plan:
        frames = [frame for j in range(len(split_jobs)) for frame in results[split, j]]
        write(out / f"{split}.xyz", frames, format="extxyz")
        manifest["splits"][split] = _stats(frames)
        LOG.info("%s: %d frames (%.0f s so far)", split, len(frames), time.perf_counter() - start)
    e0s = gd.isolated_atom_energies(sorted(gd.ALLOWED_ELEMENTS))
    (out / "isolated_atom_energies.json").write_text(json.dumps(e0s, indent=2) + "\n")
    manifest["generation_seconds"] = time.perf_counter() - start
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def ensure_data(settings: DataSettings, cache: Path = CACHE, jobs: int | None = None) -> Path:
    """Return the cache folder of ``settings``, generating it first if it is not complete.

    ``jobs``: generation worker processes (default: one per CPU core, at most 4).
    """
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    folder = cache / settings.digest()
    if (folder / "manifest.json").exists():
        LOG.info("reusing cached data %s", folder)
        return folder
    tmp = cache / f".{settings.digest()}.tmp{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    LOG.info("generating data into %s", folder)
    generate(settings, tmp, jobs=default_jobs() if jobs is None else jobs)
    if folder.exists():  # another process finished first
        shutil.rmtree(tmp)
    else:
        tmp.rename(folder)
    return folder


def default_jobs() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def read_split(folder: Path, split: str) -> list[Atoms]:
    path = folder / f"{split}.xyz"
    if not path.exists() or path.stat().st_size == 0:
        return []
    return read(path, ":")


def without_water(settings: DataSettings) -> DataSettings:
    return replace(settings, water=False)


if __name__ == "__main__":  # python -m examples.benchmark.data [--quick]
    import argparse

    p = argparse.ArgumentParser(description="generate (or reuse) the benchmark data")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--no-water", action="store_true")
    p.add_argument("--jobs", type=int, default=None, help="worker processes (default: CPU cores)")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    s = QUICK_DATA if a.quick else DataSettings()
    if a.no_water:
        s = without_water(s)
    folder = ensure_data(s, jobs=a.jobs)
    print(folder)
    print(json.dumps(json.loads((folder / "manifest.json").read_text())["splits"], indent=1))
