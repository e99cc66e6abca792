"""The active-learning loop with resumable, duplicate-free generations.

Layout of ``workdir``::

    al_state.json          finished generations (written atomically after each one)
    gen_001/trajectory.xyz recorded MD/UDD frames, with sigma in atoms.info
    gen_001/md_log.txt     step, time, energy, bias, temperature, sigma columns
    gen_001/md.png         energy and sigma versus time
    gen_001/selected.xyz   frames chosen for labelling
    gen_001/labelled.xyz   the ones the reference calculator labelled
    gen_001/train.xyz      base training set + every labelled frame so far (no duplicates)
    gen_001/train.log      output of the framework's training command

A killed run restarts the unfinished generation from scratch; finished generations are never
redone, the user's training file is never modified, and a frame is never added twice (content
hash of numbers, positions and cell).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import ase.io
import numpy as np

from ..attach.labelled_data import frame_problem, read_structures
from ..core.udd import UDDConfig
from ..dynamics import MDSettings, run_md, trajectory_entropies
from ..plots import plot_md_logs
from .labelling import FORCES_KEY, label_frames
from .selection import frame_key, select_uncertain_frames

log = logging.getLogger(__name__)
STATE_FILE = "al_state.json"
SELECTION_SCORES = ("uncertainty", "feature_distance")


@dataclass
class ALSettings:
    """Settings of the loop.

    Attributes:
        generations: number of generations to finish (a resumed run continues up to it).
        dynamics: ``"udd"`` (uncertainty-driven MD) or ``"md"`` (plain MD) for exploration.
        md: MD settings (steps, time step, temperature, thermostat, seed).
        udd: UDD bias parameters (used when ``dynamics == "udd"``).
        select_on: ``"uncertainty"`` (sigma_i, eV/A) or ``"feature_distance"`` (r_i, the
            distance of an atom's features to the training atoms, dimensionless, RMS 1 over them).
        threshold: label frames whose selection score exceeds this (eV/A for the uncertainty;
            ``None``: no threshold, take the highest-scoring frames).
        statistic: ``"mean"`` or ``"max"`` of the per-atom score per frame.
        min_spacing: minimal distance between selected frames, in recorded frames.
        max_frames: at most this many frames per generation.
    """

    generations: int = 2
    dynamics: str = "udd"
    md: MDSettings = field(default_factory=MDSettings)
    udd: UDDConfig = field(default_factory=UDDConfig)
    select_on: str = "uncertainty"
    threshold: float | None = None
    statistic: str = "mean"
    min_spacing: int = 5
    max_frames: int = 20

    def __post_init__(self) -> None:
        if self.dynamics not in ("udd", "md"):
            raise ValueError(f"invalid dynamics={self.dynamics!r}: 'udd' or 'md'")
        if self.select_on not in SELECTION_SCORES:
            raise ValueError(f"invalid select_on={self.select_on!r}: one of {SELECTION_SCORES}")
        if self.statistic not in ("mean", "max"):
            raise ValueError(f"invalid statistic={self.statistic!r}: 'mean' or 'max'")
        if self.generations < 1:
            raise ValueError(f"invalid generations={self.generations!r}: must be >= 1")
        if self.max_frames < 1:
            raise ValueError(f"invalid max_frames={self.max_frames!r}: must be >= 1")
        if self.threshold is not None and not np.isfinite(self.threshold):
            raise ValueError(f"invalid threshold={self.threshold!r}: a finite number or None")


class ActiveLearningLoop:
    """MD or UDD-MD -> select uncertain frames -> label -> append -> retrain, per generation.

    Args:
        workdir: output folder (created; reused to resume).
        model: path of the starting model (trained with an evidential head).
        train_file: the user's training extxyz (read, never written).
        start_structures: initial structures, used in turn by successive generations.
        make_calculator: ``(model_path, udd_or_None) -> ASE uncertainty calculator``.
        retrainer: ``(train_file, gen_dir, generation, previous_model) -> new model path``.
        make_reference: ``() -> reference ASE calculator`` (e.g. :func:`tblite_reference`).
        settings: :class:`ALSettings`.
    """

    def __init__(
        self,
        workdir,
        model: str,
        train_file,
        start_structures: list,
        make_calculator: Callable,
        retrainer: Callable,
        make_reference: Callable,
        settings: ALSettings,
    ):
        self.workdir = Path(workdir)
        self.initial_model = str(model)
        self.train_file = Path(train_file)
        if not self.train_file.exists():
            raise FileNotFoundError(f"training file {self.train_file} does not exist")
        for i, atoms in enumerate(read_structures(self.train_file)):
            problem = frame_problem(atoms, FORCES_KEY)
            if problem:
                raise ValueError(f"training file {self.train_file}: structure {i}: {problem}")
        if not start_structures:
            raise ValueError("at least one start structure is needed")
        for i, atoms in enumerate(start_structures):
            problem = frame_problem(atoms, FORCES_KEY)
            if problem:
                raise ValueError(f"start structure {i}: {problem}")
        self.start_structures = start_structures
        self.make_calculator = make_calculator
        self.retrainer = retrainer
        self.make_reference = make_reference
        self.settings = settings

    # -- state ------------------------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self.workdir / STATE_FILE

    def load_state(self) -> dict:
        if self.state_path.exists():
            return json.loads(self.state_path.read_text())
        return {"version": 1, "generations": []}

    def _save_state(self, state: dict) -> None:
        tmp = self.state_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, self.state_path)

    # -- loop ---------------------------------------------------------------------------------------
    def run(self) -> dict:
        """Run (or resume) until ``settings.generations`` generations are finished."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        state = self.load_state()
        done = len(state["generations"])
        if done:
            log.info("resuming after %d finished generation(s)", done)
        if done < self.settings.generations:
            self._check_reference()
        for generation in range(done + 1, self.settings.generations + 1):
            summary = self._generation(generation, state)
            state["generations"].append(summary)
            self._save_state(state)
            log.info(
                "generation %d: %d selected, %d labelled, %d failed, entropy %.3f",
                generation,
                summary["n_selected"],
                summary["n_labelled"],
                summary["n_failed"],
                summary["entropy"],
            )
        return state

    def _check_reference(self) -> None:
        """Create the reference calculator once before any MD: a reference that cannot be
        created at all (e.g. tblite missing) stops the run instead of skipping every frame."""
        try:
            self.make_reference()
        except Exception as err:  # noqa: BLE001 - whatever the factory raises, stop with it
            raise RuntimeError(
                f"the reference calculator cannot be created ({err}); nothing was run"
            ) from err

    def _current_model(self, state: dict) -> str:
        return state["generations"][-1]["model"] if state["generations"] else self.initial_model

    def _generation(self, generation: int, state: dict) -> dict:
        s = self.settings
        gen_dir = self.workdir / f"gen_{generation:03d}"
        if gen_dir.exists():  # an interrupted generation: start it again from scratch
            shutil.rmtree(gen_dir)
        gen_dir.mkdir(parents=True)
        model = self._current_model(state)

        udd = s.udd if s.dynamics == "udd" else None
        calc = self.make_calculator(model, udd)
        start = self.start_structures[(generation - 1) % len(self.start_structures)]
        md = MDSettings(**{**asdict(s.md), "seed": s.md.seed + generation})
        traj = run_md(start, calc, md)
        ase.io.write(gen_dir / "trajectory.xyz", traj.frames, format="extxyz")
        traj.write_log(gen_dir / "md_log.txt")
        plot_md_logs({s.dynamics.upper(): traj.log}, gen_dir / "md.png", f"generation {generation}")

        column = s.select_on if s.statistic == "mean" else f"{s.select_on}_max"
        threshold = -np.inf if s.threshold is None else s.threshold
        chosen = select_uncertain_frames(traj.log[column], threshold, s.min_spacing, s.max_frames)
        selected = [traj.frames[i] for i in chosen]
        ase.io.write(gen_dir / "selected.xyz", selected, format="extxyz")
        labelled, failures = label_frames(selected, self.make_reference)

        train_file, n_new = self._write_training_set(gen_dir, labelled, state)
        ase.io.write(gen_dir / "labelled.xyz", labelled, format="extxyz")
        new_model = self.retrainer(train_file, gen_dir, generation, model)
        return {
            "generation": generation,
            "model": str(new_model),
            "train_file": str(train_file),
            "n_selected": len(selected),
            "n_labelled": len(labelled),
            "n_added": n_new,
            "n_failed": len(failures),
            "failures": failures,
            "stable": traj.stable,
            "mean_uncertainty": float(np.mean(traj.log["uncertainty"])),
            "max_uncertainty": float(np.max(traj.log["uncertainty_max"])),
            "entropy": trajectory_entropies([traj.frames])[0],
        }

    def _write_training_set(self, gen_dir: Path, labelled: list, state: dict):
        """gen_dir/train.xyz = the user's training set + all labelled frames so far, deduplicated."""
        frames, seen = [], set()

        def add(candidates) -> int:
            added = 0
            for atoms in candidates:
                key = frame_key(atoms)
                if key not in seen:
                    seen.add(key)
                    frames.append(atoms)
                    added += 1
            return added

        add(ase.io.read(self.train_file, ":"))
        for summary in state["generations"]:
            add(ase.io.read(Path(summary["train_file"]).parent / "labelled.xyz", ":"))
        n_new = add(labelled)
        path = gen_dir / "train.xyz"
        tmp = gen_dir / "train.xyz.tmp"
        ase.io.write(tmp, frames, format="extxyz")
        os.replace(tmp, path)
        return path, n_new
