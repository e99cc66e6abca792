"""Walkers: the MD or UDD-MD runs that explore in one generation, one Dask task each.

Walker ``w`` of generation ``g`` (``W`` walkers per generation, ``S`` start structures) starts
from structure ``((g - 1) W + w) mod S`` with the seed ``seed + g + 1000 w``, so a generation is
the same whether its walkers run at once, one by one, or again after a crash. With one walker
this is the single-trajectory loop of earlier versions.

A finished walker is kept in ``gen_NNN/walker_WW/``: ``trajectory.xyz`` (frames, with sigma in
``atoms.info``), ``md_log.txt`` (the log columns), ``log.npz`` (the same, exactly) and
``done.json``, written last; a walker without ``done.json`` runs again on resume.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import ase.io
import numpy as np
from ase import Atoms

from ..core.udd import UDDConfig
from ..dynamics import MDSettings, MDTrajectory, run_md

DONE_FILE = "done.json"


@dataclass(frozen=True)
class Walker:
    """One exploration run of a generation.

    Attributes:
        generation: generation number (1, 2, ...).
        index: walker number in the generation (0, 1, ...).
        start_index: index of its start structure.
        seed: seed of its initial velocities and thermostat noise.
    """

    generation: int
    index: int
    start_index: int
    seed: int

    @property
    def name(self) -> str:
        return f"walker_{self.index:02d}"


def plan_walkers(generation: int, walkers: int, n_starts: int, seed: int) -> list[Walker]:
    """The walkers of ``generation`` (see the module docstring)."""
    return [
        Walker(
            generation, w, ((generation - 1) * walkers + w) % n_starts, seed + generation + 1000 * w
        )
        for w in range(walkers)
    ]


@dataclass(frozen=True)
class WalkerTask:
    """Everything a Dask worker needs to run one walker (picklable).

    Attributes:
        walker: which walker.
        model: path of the model (on a file system the worker sees).
        start: start structure.
        md: MD settings (its seed is replaced by the walker's).
        udd: UDD bias, or None for plain MD.
        make_calculator: ``(model_path, udd_or_None) -> ASE uncertainty calculator``.
    """

    walker: Walker
    model: str
    start: Atoms
    md: MDSettings
    udd: UDDConfig | None
    make_calculator: Callable


def run_walker(task: WalkerTask) -> MDTrajectory:
    """Run one walker (on a Dask worker or in this process)."""
    calculator = task.make_calculator(task.model, task.udd)
    return run_md(task.start, calculator, replace(task.md, seed=task.walker.seed), progress=False)


def walker_signature(task: WalkerTask) -> dict:
    """What a walker's result depends on besides its seed (JSON): model, MD and UDD settings."""
    return {
        "model": task.model,
        "md": asdict(replace(task.md, seed=task.walker.seed)),
        "udd": asdict(task.udd) if task.udd is not None else None,
    }


def save_walker(folder: Path, walker: Walker, traj: MDTrajectory, signature: dict) -> None:
    """Write a finished walker's files; ``done.json`` last, each file atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    _atomic(folder / "trajectory.xyz", lambda p: ase.io.write(p, traj.frames, format="extxyz"))
    _atomic(folder / "md_log.txt", traj.write_log)
    _atomic(folder / "log.npz", lambda p: np.savez(p, **traj.log), suffix=".npz")
    done = {**asdict(walker), **signature, "stable": traj.stable, "frames": len(traj.frames)}
    _atomic(folder / DONE_FILE, lambda p: Path(p).write_text(json.dumps(done, indent=2)))


def load_walker(folder: Path, walker: Walker, signature: dict) -> MDTrajectory | None:
    """The saved trajectory of ``walker`` run as ``signature`` says, or None if it did not
    finish (or was run with another model or other settings: it runs again)."""
    done_path = folder / DONE_FILE
    if not done_path.exists():
        return None
    done = json.loads(done_path.read_text())
    if done.get("seed") != walker.seed or any(done.get(k) != v for k, v in signature.items()):
        return None
    frames = ase.io.read(folder / "trajectory.xyz", ":")
    with np.load(folder / "log.npz") as data:
        log = {k: data[k] for k in data.files}
    return MDTrajectory(frames=frames, log=log, stable=bool(done["stable"]))


def _atomic(path: Path, write: Callable, suffix: str = "") -> None:
    """``write(tmp)`` then rename onto ``path``: a killed run never leaves half a file."""
    tmp = path.with_name(f".{path.name}.tmp{suffix}")
    write(tmp)
    os.replace(tmp, path)
