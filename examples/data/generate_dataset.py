#!/usr/bin/env python
"""Generate the small GFN2-xTB labelled molecular dataset shipped with eip-plugins.

The data mimic rMD17 ethanol, but every frame is labelled with GFN2-xTB (via ``tblite``) so
that the set can be regenerated anywhere in a few minutes on a laptop CPU.

Sampling: gas-phase Langevin molecular dynamics with the GFN2-xTB calculator itself
(timestep 0.5 fs, friction 0.02 1/fs), started from the ``ase.build.molecule`` geometry
with Maxwell-Boltzmann velocities (centre-of-mass momentum and angular momentum removed;
centre of mass held fixed with ``FixCom``).  Every file is drawn from ``--walkers``
independent trajectories ("walkers"), each equilibrated for ``--equil-steps`` steps and then
sampled every ``--stride`` steps.  Each file has its own random generator, seeded with
``--seed`` + a fixed per-file offset (train 0, valid 1, test_300K 2, test_1200K 3, unseen 4),
so the splits are statistically independent and the output is reproducible.

Output files (extxyz, non-periodic, zero cell):

* ``ethanol_train.xyz``        300 K, training set
* ``ethanol_valid.xyz``        300 K, validation set
* ``ethanol_test_300K.xyz``    300 K, in-distribution test set
* ``ethanol_test_1200K.xyz``   1200 K, held-out high-temperature (out-of-distribution) test set
* ``unseen_test_300K.xyz``     300 K, a different C/H/O molecule never seen in training
* ``isolated_atom_energies.json``  GFN2-xTB energies (eV) of the free H, C and O atoms

Labels: ``atoms.info["REF_energy"]`` (eV), ``atoms.arrays["REF_forces"]`` (eV/Angstrom) and
``atoms.info["config_type"]``.  No calculator is attached, so no plain ``energy``/``forces``
keys are written.

Frames whose SCF fails, or in which the molecule changed its bonding topology, are skipped
(logged); the walker then resumes from the last kept frame with a fresh calculator.

Example::

    python examples/data/generate_dataset.py              # full dataset into examples/data
    python examples/data/generate_dataset.py --quick --out /tmp/eip_data   # tiny, for tests
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.build import molecule
from ase.calculators.calculator import CalculationFailed
from ase.constraints import FixCom
from ase.io import write
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import (
    MaxwellBoltzmannDistribution,
    Stationary,
    ZeroRotation,
)
from ase.neighborlist import natural_cutoffs, neighbor_list

try:  # ASE >= 3.29; MaxwellBoltzmannDistribution is deprecated there
    from ase.md.velocitydistribution import thermalize_momenta
except ImportError:  # pragma: no cover - older ASE
    thermalize_momenta = None

try:
    from tqdm import tqdm
except ImportError:  # pragma: no cover - tqdm is optional
    tqdm = None

LOG = logging.getLogger("generate_dataset")

METHOD = "GFN2-xTB"
ALLOWED_ELEMENTS = {"H", "C", "O"}
# Spin multiplicities of the free atoms (ground states: H 2S, C 3P, O 3P).
ATOM_MULTIPLICITY = {"H": 2, "C": 3, "O": 3}
BOND_FACTOR = 1.35  # bonded if distance < BOND_FACTOR x (sum of ASE covalent radii)


@dataclass(frozen=True)
class Split:
    """One output file, sampled by its own independent Langevin walkers.

    Attributes:
        filename: output file name (extxyz).
        molecule: name understood by ``ase.build.molecule``.
        temperature_K: thermostat and initial-velocity temperature in kelvin.
        n_frames: number of labelled frames to keep.
        seed_offset: added to the global ``--seed`` to give this split's RNG seed.
        config_type: value stored in ``atoms.info["config_type"]``.
    """

    filename: str
    molecule: str
    temperature_K: float
    n_frames: int
    seed_offset: int
    config_type: str


@dataclass(frozen=True)
class MDSettings:
    """Langevin MD settings.

    Attributes:
        timestep_fs: integration timestep in fs.
        friction_per_fs: Langevin friction coefficient in 1/fs.
        equil_steps: MD steps discarded at the start of every walker.
        stride: MD steps between kept frames.
        walkers: independent trajectories per split (frames divided evenly among them).
        max_failures: give up on a walker after this many skipped frames.
    """

    timestep_fs: float = 0.5
    friction_per_fs: float = 0.02
    equil_steps: int = 1000
    stride: int = 20
    walkers: int = 5
    max_failures: int = 50


def make_calculator(multiplicity: int | None = None):
    """Return a fresh, silent tblite GFN2-xTB ASE calculator (energies in eV).

    tblite is imported lazily and, unless ``OMP_NUM_THREADS`` is already set, limited to one
    OpenMP thread: for 9 atoms threading only adds overhead, and spinning OpenMP threads slow
    the run down by ~10x when another process shares the (2-core) CPU.
    """
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from tblite.ase import TBLite

    kwargs = {"method": METHOD, "verbosity": 0}
    if multiplicity is not None:
        kwargs["multiplicity"] = multiplicity
    return TBLite(**kwargs)


def build_molecule(name: str) -> Atoms:
    """Build a non-periodic molecule (zero cell) and check it only contains H, C and O."""
    atoms = molecule(name)
    extra = set(atoms.get_chemical_symbols()) - ALLOWED_ELEMENTS
    if extra:
        raise ValueError(f"{name} contains elements {sorted(extra)}; only C, H, O allowed")
    atoms.set_cell(np.zeros((3, 3)))
    atoms.set_pbc(False)
    atoms.translate(-atoms.get_center_of_mass())
    return atoms


def bond_topology(atoms: Atoms) -> frozenset[tuple[int, int]]:
    """Return the set of bonded atom pairs (i < j): distance < 1.35 x sum of covalent radii.

    The generous factor keeps thermally stretched bonds (even at 1200 K) as bonds, while
    non-bonded pairs in these molecules stay above ~1.5 x the covalent-radius sum.
    """
    i, j = neighbor_list("ij", atoms, natural_cutoffs(atoms, mult=BOND_FACTOR))
    return frozenset((int(a), int(b)) for a, b in zip(i, j, strict=True) if a < b)


def init_velocities(atoms: Atoms, temperature_K: float, rng: np.random.Generator) -> None:
    """Draw Maxwell-Boltzmann velocities at ``temperature_K`` (K) without net drift/rotation."""
    if thermalize_momenta is not None:  # ASE >= 3.29
        thermalize_momenta(atoms, temperature_K, rng=rng)
    else:  # pragma: no cover - older ASE
        MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=rng)
    Stationary(atoms)
    ZeroRotation(atoms)


def labelled_frame(atoms: Atoms, config_type: str) -> Atoms:
    """Copy positions and xTB labels of ``atoms`` into a new calculator-free ``Atoms``.

    Energy (eV) goes to ``info["REF_energy"]``, forces (eV/Angstrom, unconstrained) to
    ``arrays["REF_forces"]``.  Positions are shifted so the centre of mass is at the origin.
    """
    energy = float(atoms.get_potential_energy())
    forces = np.array(atoms.get_forces(apply_constraint=False), dtype=float)
    if not (np.isfinite(energy) and np.all(np.isfinite(forces))):
        raise CalculationFailed("non-finite energy or forces")
    frame = Atoms(
        symbols=atoms.get_chemical_symbols(),
        positions=atoms.get_positions() - atoms.get_center_of_mass(),
        cell=np.zeros((3, 3)),
        pbc=False,
    )
    frame.calc = None
    frame.info["REF_energy"] = energy
    frame.info["config_type"] = config_type
    frame.arrays["REF_forces"] = forces
    return frame


def start_walker(split: Split, md: MDSettings, rng: np.random.Generator) -> Langevin:
    """Build the molecule, draw velocities and equilibrate it for ``md.equil_steps`` steps.

    Returns the Langevin integrator (its ``atoms`` carry a GFN2-xTB calculator).  The
    centre of mass is held fixed with ``FixCom``; temperatures in K, time in fs.
    """
    for attempt in range(3):
        atoms = build_molecule(split.molecule)
        atoms.set_constraint(FixCom())
        atoms.calc = make_calculator()
        init_velocities(atoms, split.temperature_K, rng)
        dyn = Langevin(
            atoms,
            timestep=md.timestep_fs * units.fs,
            temperature_K=split.temperature_K,
            friction=md.friction_per_fs / units.fs,
            fixcm=False,
            rng=rng,
        )
        try:
            dyn.run(md.equil_steps)
            return dyn
        except CalculationFailed as err:
            LOG.warning("%s: equilibration attempt %d failed (%s)", split.filename, attempt, err)
    raise RuntimeError(f"{split.filename}: equilibration failed three times")


def run_walker(
    split: Split, md: MDSettings, rng: np.random.Generator, n_frames: int, bar=None
) -> tuple[list[Atoms], int]:
    """Run one equilibrated Langevin walker and keep ``n_frames`` frames, ``md.stride`` apart.

    A frame whose SCF fails or whose bonding topology differs from the starting geometry is
    skipped: the walker is reset to the last kept frame with a fresh calculator and goes on
    (the Langevin noise then takes it along a different path).

    Returns:
        The labelled frames and the number of skipped frames.
    """
    dyn = start_walker(split, md, rng)
    atoms = dyn.atoms
    reference_bonds = bond_topology(build_molecule(split.molecule))
    frames: list[Atoms] = []
    failures = 0
    last_good = (atoms.get_positions(), atoms.get_momenta())
    while len(frames) < n_frames:
        try:
            dyn.run(md.stride)
            if bond_topology(atoms) != reference_bonds:
                raise CalculationFailed("bonding topology changed")
            frames.append(labelled_frame(atoms, split.config_type))
            last_good = (atoms.get_positions(), atoms.get_momenta())
        except CalculationFailed as err:
            failures += 1
            LOG.warning("%s: skipped a frame (%s)", split.filename, err)
            if failures > md.max_failures:
                raise RuntimeError(f"{split.filename}: too many failed frames") from err
            atoms.calc = make_calculator()
            atoms.set_positions(last_good[0], apply_constraint=False)
            atoms.set_momenta(last_good[1], apply_constraint=False)
            continue
        if bar is not None:
            bar.update(1)
    return frames, failures


def sample_split(split: Split, md: MDSettings, seed: int, show_progress: bool) -> list[Atoms]:
    """Return ``split.n_frames`` labelled frames from ``md.walkers`` independent walkers.

    The frames are divided as evenly as possible among the walkers, which run one after the
    other from the same ``numpy`` generator seeded with ``seed`` (velocities and noise).

    Args:
        split: what to sample (molecule, temperature in K, number of frames).
        md: MD settings (timestep in fs, friction in 1/fs, equilibration, stride, walkers).
        seed: seed of the split's random generator.
        show_progress: show a tqdm bar if tqdm is installed.
    """
    rng = np.random.default_rng(seed)
    n_walkers = max(1, min(md.walkers, split.n_frames))
    counts = [len(c) for c in np.array_split(np.arange(split.n_frames), n_walkers)]
    LOG.info(
        "%s: %s at %g K, seed %d, %d walker(s) x %s frames",
        split.filename,
        split.molecule,
        split.temperature_K,
        seed,
        n_walkers,
        "/".join(map(str, sorted(set(counts)))),
    )
    bar = tqdm(total=split.n_frames, desc=split.filename, leave=False) if show_progress else None
    frames: list[Atoms] = []
    failures = 0
    for walker, count in enumerate(counts):
        walker_frames, walker_failures = run_walker(split, md, rng, count, bar)
        frames += walker_frames
        failures += walker_failures
        LOG.log(
            logging.DEBUG if bar is not None else logging.INFO,
            "%s: walker %d/%d done, %d/%d frames",
            split.filename,
            walker + 1,
            n_walkers,
            len(frames),
            split.n_frames,
        )
    if bar is not None:
        bar.close()
    if failures:
        LOG.warning("%s: %d frame(s) skipped in total", split.filename, failures)
    return frames


def isolated_atom_energies(elements: list[str]) -> dict[str, float]:
    """Return GFN2-xTB energies (eV) of the free atoms in their ground-state multiplicity."""
    energies = {}
    for symbol in elements:
        atom = Atoms(symbol, cell=np.zeros((3, 3)), pbc=False)
        atom.calc = make_calculator(multiplicity=ATOM_MULTIPLICITY[symbol])
        energies[symbol] = float(atom.get_potential_energy())
    return energies


def make_splits(args: argparse.Namespace) -> list[Split]:
    """Return the list of output files to generate from the CLI arguments."""
    t, t_hot = args.temperature, args.hot_temperature
    return [
        Split("ethanol_train.xyz", "CH3CH2OH", t, args.n_train, 0, f"train_{t:g}K"),
        Split("ethanol_valid.xyz", "CH3CH2OH", t, args.n_valid, 1, f"valid_{t:g}K"),
        Split("ethanol_test_300K.xyz", "CH3CH2OH", t, args.n_test, 2, f"test_{t:g}K"),
        Split("ethanol_test_1200K.xyz", "CH3CH2OH", t_hot, args.n_hot, 3, f"test_{t_hot:g}K"),
        Split("unseen_test_300K.xyz", args.unseen, t, args.n_unseen, 4, f"unseen_{t:g}K"),
    ]


def summarize(path: Path, frames: list[Atoms]) -> dict[str, float]:
    """Return per-file statistics: frame count, mean |F| and RMS F (eV/A), energy range (eV)."""
    forces = np.concatenate([f.arrays["REF_forces"] for f in frames])
    energies = np.array([f.info["REF_energy"] for f in frames])
    return {
        "file": path.name,
        "frames": len(frames),
        "kB": path.stat().st_size / 1024,
        "mean_abs_F": float(np.linalg.norm(forces, axis=1).mean()),
        "rms_F": float(np.sqrt(np.mean(forces**2))),
        "E_min": float(energies.min()),
        "E_max": float(energies.max()),
    }


def print_summary(rows: list[dict[str, float]], wall_s: float) -> None:
    """Print a table of per-file statistics (forces in eV/A, energies in eV)."""
    header = (
        f"{'file':<26}{'frames':>7}{'size/kB':>9}{'mean|F|':>9}{'rmsF':>8}"
        f"{'E_min/eV':>12}{'E_max/eV':>12}{'dE/eV':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['file']:<26}{r['frames']:>7d}{r['kB']:>9.1f}{r['mean_abs_F']:>9.3f}"
            f"{r['rms_F']:>8.3f}{r['E_min']:>12.3f}{r['E_max']:>12.3f}"
            f"{r['E_max'] - r['E_min']:>8.3f}"
        )
    print(f"total {sum(r['kB'] for r in rows):.1f} kB, wall time {wall_s:.1f} s")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; ``--quick`` shrinks every split for fast tests."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="out dir")
    p.add_argument("--seed", type=int, default=2024, help="base seed; file i uses seed + i")
    p.add_argument("--n-train", type=int, default=300, help="frames in ethanol_train.xyz")
    p.add_argument("--n-valid", type=int, default=50, help="frames in ethanol_valid.xyz")
    p.add_argument("--n-test", type=int, default=100, help="frames in ethanol_test_300K.xyz")
    p.add_argument("--n-hot", type=int, default=100, help="frames in ethanol_test_1200K.xyz")
    p.add_argument("--n-unseen", type=int, default=50, help="frames in unseen_test_300K.xyz")
    p.add_argument("--temperature", type=float, default=300.0, help="K")
    p.add_argument("--hot-temperature", type=float, default=1200.0, help="K")
    p.add_argument("--unseen", default="CH3CHO", help="ase.build.molecule name (C/H/O only)")
    p.add_argument("--timestep", type=float, default=0.5, help="fs")
    p.add_argument("--friction", type=float, default=0.02, help="Langevin friction, 1/fs")
    p.add_argument("--equil-steps", type=int, default=1000, help="discarded steps per walker")
    p.add_argument("--stride", type=int, default=20, help="MD steps between kept frames")
    p.add_argument("--walkers", type=int, default=5, help="independent trajectories per file")
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny dataset in ~2 s for tests: 20/5/8/8/5 frames, 40 equilibration steps, "
        "stride 5, 2 walkers (overrides those options)",
    )
    p.add_argument("--no-progress", action="store_true", help="log instead of a tqdm bar")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = p.parse_args(argv)
    if args.quick:
        args.n_train, args.n_valid, args.n_test, args.n_hot, args.n_unseen = 20, 5, 8, 8, 5
        args.equil_steps, args.stride, args.walkers = 40, 5, 2
    return args


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    """Generate all files into ``--out`` and return the summary rows."""
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    args.out.mkdir(parents=True, exist_ok=True)
    md = MDSettings(args.timestep, args.friction, args.equil_steps, args.stride, args.walkers)
    show_progress = tqdm is not None and not args.no_progress
    start = time.perf_counter()
    rows = []
    for split in make_splits(args):
        frames = sample_split(split, md, args.seed + split.seed_offset, show_progress)
        path = args.out / split.filename
        write(path, frames, format="extxyz")
        rows.append(summarize(path, frames))
    e0s = isolated_atom_energies(sorted(ALLOWED_ELEMENTS))
    (args.out / "isolated_atom_energies.json").write_text(json.dumps(e0s, indent=2) + "\n")
    print_summary(rows, time.perf_counter() - start)
    return rows


if __name__ == "__main__":
    main()
