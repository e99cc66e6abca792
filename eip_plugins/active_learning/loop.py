"""The active-learning loop: resumable, loss-free, duplicate-free generations.

Layout of ``workdir``::

    al_state.json               finished generations (rewritten atomically after each one)
    al_summary.json, .png       per generation: frames selected, sigma along the walkers,
                                force error and sigma on the held-out set (when one is given)
    gen_001/walker_00/          one folder per walker: trajectory.xyz, md_log.txt, done.json
    gen_001/md.png              energy and sigma versus time, every walker
    gen_001/selected.xyz        frames chosen for labelling, over all walkers
    gen_001/labels/             one file per labelled (NNNN.xyz) or failed (NNNN.failed) frame
    gen_001/to_label.xyz        (--reference external) the frames for the user to label
    gen_001/labelled.xyz        the labelled frames
    gen_001/train.xyz           base training set + every labelled frame so far (no duplicates)
    gen_001/train.log           output of the framework's training command

Every file is written atomically (a temporary file renamed over it). A killed run resumes: a
finished generation is never redone, a finished walker never runs again, a finished label is
never computed again, the user's training file is never modified, and a frame is never added
twice (content hash of numbers, positions and cell). The retraining of an unfinished generation
starts again.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import ase.io
import numpy as np

from ..attach.labelled_data import frame_problem, read_structures
from ..core.udd import UDDConfig
from ..dynamics import MDSettings, trajectory_entropies
from ..plots import plot_al_summary, plot_md_logs
from .holdout import evaluate_holdout
from .labelling import ENERGY_KEY, FORCES_KEY, label_frame
from .selection import frame_key, select_uncertain_frames
from .tasks import InProcessTasks
from .walkers import (
    WalkerTask,
    load_walker,
    plan_walkers,
    run_walker,
    save_walker,
    walker_signature,
)

log = logging.getLogger(__name__)
STATE_FILE = "al_state.json"
SUMMARY_FILE = "al_summary.json"
SELECTION_SCORES = ("uncertainty", "feature_distance")


@dataclass
class ALSettings:
    """Settings of the loop.

    Attributes:
        generations: number of generations to finish (a resumed run continues up to it).
        walkers: MD/UDD runs per generation, from successive start structures and seeds.
        dynamics: ``"udd"`` (uncertainty-driven MD) or ``"md"`` (plain MD) for exploration.
        md: MD settings (steps, time step, temperature, thermostat, seed).
        udd: UDD bias parameters (used when ``dynamics == "udd"``).
        select_on: ``"uncertainty"`` (sigma_i, eV/A) or ``"feature_distance"`` (r_i, the
            distance of an atom's features to the training atoms, dimensionless, RMS 1 over them).
        threshold: label frames whose selection score exceeds this (eV/A for the uncertainty;
            ``None``: no threshold, take the highest-scoring frames).
        threshold_max: leave out frames whose score exceeds this (DP-GEN's upper trust level:
            structures far outside the training data, often unphysical — atoms pushed
            together, bonds broken — whose labels would pull the model away from the
            configurations it is for); ``None``: no upper bound.
        statistic: ``"mean"`` or ``"max"`` of the per-atom score per frame.
        min_spacing: minimal distance between selected frames of one walker, in recorded frames.
        max_frames: at most this many frames per generation, the highest-scoring over all walkers.
    """

    generations: int = 2
    walkers: int = 1
    dynamics: str = "udd"
    md: MDSettings = field(default_factory=MDSettings)
    udd: UDDConfig = field(default_factory=UDDConfig)
    select_on: str = "uncertainty"
    threshold: float | None = None
    threshold_max: float | None = None
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
        for name in ("generations", "walkers", "max_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"invalid {name}={getattr(self, name)!r}: must be >= 1")
        if self.threshold is not None and not np.isfinite(self.threshold):
            raise ValueError(f"invalid threshold={self.threshold!r}: a finite number or None")
        if self.threshold_max is not None and not np.isfinite(self.threshold_max):
            raise ValueError(
                f"invalid threshold_max={self.threshold_max!r}: a finite number or None"
            )
        if (
            self.threshold is not None
            and self.threshold_max is not None
            and not self.threshold_max > self.threshold
        ):
            raise ValueError(
                f"invalid threshold_max={self.threshold_max!r}: must exceed "
                f"threshold={self.threshold!r}"
            )


class ActiveLearningLoop:
    """MD/UDD walkers -> select uncertain frames -> label -> append -> retrain, per generation.

    Args:
        workdir: output folder (created; reused to resume).
        model: path of the starting model (trained with an evidential head).
        train_file: the user's training extxyz (read, never written).
        start_structures: initial structures, used in turn by successive walkers.
        make_calculator: ``(model_path, udd_or_None) -> ASE uncertainty calculator``; picklable
            when the tasks run on Dask.
        retrainer: ``(train_file, gen_dir, generation, previous_model) -> new model path``.
        make_reference: ``() -> reference ASE calculator`` (e.g. a
            :class:`~eip_plugins.active_learning.references.TBLiteReference`), or ``None`` for
            external labelling: the loop writes ``gen_NNN/to_label.xyz`` and stops until the user
            puts ``gen_NNN/labelled.xyz`` beside it.
        settings: :class:`ALSettings`.
        tasks: where walkers and labels run: :class:`~.tasks.DaskTasks` or (default)
            :class:`~.tasks.InProcessTasks`.
        holdout: labelled frames (``REF_forces``) on which every generation's model is scored.
    """

    def __init__(
        self,
        workdir,
        model: str,
        train_file,
        start_structures: list,
        make_calculator: Callable,
        retrainer: Callable,
        make_reference: Callable | None,
        settings: ALSettings,
        tasks=None,
        holdout: list | None = None,
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
        self.tasks = tasks if tasks is not None else InProcessTasks()
        self.holdout = holdout

    # -- state ------------------------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self.workdir / STATE_FILE

    def load_state(self) -> dict:
        if self.state_path.exists():
            return json.loads(self.state_path.read_text())
        return {"version": 2, "generations": []}

    def _save_state(self, state: dict) -> None:
        _write_atomic(self.state_path, json.dumps(state, indent=2))
        rows = summary_rows(state)
        _write_atomic(self.workdir / SUMMARY_FILE, json.dumps(rows, indent=2))
        plot_al_summary(rows, self.workdir / "al_summary.png")

    # -- loop ---------------------------------------------------------------------------------------
    def run(self) -> dict:
        """Run (or resume) until ``settings.generations`` generations are finished.

        Returns the state; ``state["waiting"]`` is set when external labelling stopped it.
        """
        self.workdir.mkdir(parents=True, exist_ok=True)
        state = self.load_state()
        state.pop("waiting", None)
        done = len(state["generations"])
        if done:
            log.info("resuming after %d finished generation(s)", done)
        if done < self.settings.generations and self.make_reference is not None:
            self._check_reference()
        if self.holdout is not None and "holdout_initial" not in state:
            state["holdout_initial"] = evaluate_holdout(
                self.make_calculator(self.initial_model, None), self.holdout
            )
            self._save_state(state)
        for generation in range(done + 1, self.settings.generations + 1):
            summary = self._generation(generation, state)
            if "waiting" in summary:
                state["waiting"] = summary["waiting"]
                return state
            state["generations"].append(summary)
            self._save_state(state)
            log.info(
                "generation %d: %d walker(s), %d selected, %d labelled, %d failed",
                generation,
                summary["n_walkers"],
                summary["n_selected"],
                summary["n_labelled"],
                summary["n_failed"],
            )
        return state

    def _check_reference(self) -> None:
        """Before any MD, create the reference calculator and label start structure 0 with it
        (as one task, where the labels run): a reference that cannot be created (e.g. tblite
        missing) or that fails or returns non-finite values there stops the run with its reason,
        instead of skipping every frame after hours of MD."""
        try:
            self.make_reference()
        except Exception as err:  # noqa: BLE001 - whatever the factory raises, stop with it
            raise RuntimeError(
                f"the reference calculator cannot be created ({err}); nothing was run"
            ) from err
        task = partial(label_frame, make_reference=self.make_reference)
        for _, ok, result in self.tasks.run(task, self.start_structures[:1], "reference check"):
            reason = result[1] if ok else f"the task failed ({result})"
            if reason is not None:
                raise RuntimeError(
                    f"the reference calculator failed on start structure 0 ({reason}); "
                    "nothing was run"
                )

    def _current_model(self, state: dict) -> str:
        return state["generations"][-1]["model"] if state["generations"] else self.initial_model

    def _generation(self, generation: int, state: dict) -> dict:
        gen_dir = self.workdir / f"gen_{generation:03d}"
        gen_dir.mkdir(parents=True, exist_ok=True)  # kept on resume: finished work is reused
        model = self._current_model(state)
        trajectories, walkers = self._explore(gen_dir, generation, model)
        selected = self._select(gen_dir, trajectories)
        if self.make_reference is None:
            outcome = self._external_labels(gen_dir, selected)
            if outcome is None:
                return {
                    "waiting": {
                        "generation": generation,
                        "to_label": str(gen_dir / "to_label.xyz"),
                        "labelled": str(gen_dir / "labelled.xyz"),
                        "frames": len(selected),
                    }
                }
            labelled, failures = outcome
        else:
            labelled, failures = self._label(gen_dir, selected)
        train_file, n_new = self._write_training_set(gen_dir, labelled, state)
        new_model = self.retrainer(train_file, gen_dir, generation, model)
        logs = [t.log for t in trajectories]
        summary = {
            "generation": generation,
            "model": str(new_model),
            "train_file": str(train_file),
            "n_walkers": len(trajectories),
            "walkers": walkers,
            "n_selected": len(selected),
            "n_labelled": len(labelled),
            "n_added": n_new,
            "n_failed": len(failures),
            "failures": failures,
            "stable": all(t.stable for t in trajectories),
            "mean_uncertainty": float(np.mean(np.concatenate([lg["uncertainty"] for lg in logs]))),
            "max_uncertainty": float(
                np.max(np.concatenate([lg["uncertainty_max"] for lg in logs]))
            ),
            "selected_mean_uncertainty": (
                float(np.mean([a.info["uncertainty"] for a in selected])) if selected else None
            ),
            "entropy": trajectory_entropies([[f for t in trajectories for f in t.frames]])[0],
        }
        if self.holdout is not None:
            summary["holdout"] = evaluate_holdout(
                self.make_calculator(str(new_model), None), self.holdout
            )
        return summary

    # -- the stages of a generation -------------------------------------------------------------
    def _explore(self, gen_dir: Path, generation: int, model: str):
        """Run the walkers that have not finished; returns (trajectories, walker summaries)."""
        s = self.settings
        plan = plan_walkers(generation, s.walkers, len(self.start_structures), s.md.seed)
        udd = s.udd if s.dynamics == "udd" else None
        tasks = {
            w.index: WalkerTask(
                w, model, self.start_structures[w.start_index], s.md, udd, self.make_calculator
            )
            for w in plan
        }
        signature = {i: walker_signature(task) for i, task in tasks.items()}
        trajectories = {w.index: load_walker(gen_dir / w.name, w, signature[w.index]) for w in plan}
        todo = [w for w in plan if trajectories[w.index] is None]
        if len(todo) < len(plan):
            log.info(
                "generation %d: %d of %d walkers already finished",
                generation,
                len(plan) - len(todo),
                len(plan),
            )
        errors = []
        todo_tasks = [tasks[w.index] for w in todo]
        for i, ok, result in self.tasks.run(
            run_walker, todo_tasks, f"generation {generation} walkers"
        ):
            walker = todo[i]
            if not ok:
                errors.append(f"{walker.name}: {result}")
                continue
            folder, sig = gen_dir / walker.name, signature[walker.index]
            save_walker(folder, walker, result, sig)
            # read back: a resumed run and an uninterrupted one see the same (written) numbers
            trajectories[walker.index] = load_walker(folder, walker, sig)
        if errors:
            raise RuntimeError(
                f"generation {generation}: {len(errors)} walker(s) failed ({errors[0]}); the "
                "finished ones are kept, --resume runs the others again"
            )
        ordered = [trajectories[w.index] for w in plan]
        plot_md_logs(
            {
                f"{s.dynamics.upper()} walker {w.index}": t.log
                for w, t in zip(plan, ordered, strict=True)
            },
            gen_dir / "md.png",
            f"generation {generation}",
        )
        walkers = [
            {
                "walker": w.index,
                "start_index": w.start_index,
                "seed": w.seed,
                "stable": t.stable,
                "frames": len(t.frames),
                "mean_uncertainty": float(np.mean(t.log["uncertainty"])),
            }
            for w, t in zip(plan, ordered, strict=True)
        ]
        return ordered, walkers

    def _select(self, gen_dir: Path, trajectories: list) -> list:
        """The highest-scoring frames over all walkers (``selected.xyz``, reused on resume)."""
        path = gen_dir / "selected.xyz"
        if path.exists():
            return _read_frames(path)
        s = self.settings
        column = s.select_on if s.statistic == "mean" else f"{s.select_on}_max"
        threshold = -np.inf if s.threshold is None else s.threshold
        threshold_max = np.inf if s.threshold_max is None else s.threshold_max
        candidates = []
        for w, traj in enumerate(trajectories):
            score = traj.log[column]
            for i in select_uncertain_frames(score, threshold, s.min_spacing, None, threshold_max):
                candidates.append((-float(score[i]), w, i))
        chosen = sorted(sorted(candidates)[: s.max_frames], key=lambda c: (c[1], c[2]))
        _write_atomic_frames(path, [trajectories[w].frames[i] for _, w, i in chosen])
        return _read_frames(path)

    def _label(self, gen_dir: Path, selected: list):
        """Label every selected frame not labelled yet, one task each; ``labels/NNNN.xyz`` (or
        ``NNNN.failed``) as each finishes, ``labelled.xyz`` once all have."""
        labels_dir = gen_dir / "labels"
        labels_dir.mkdir(exist_ok=True)
        outcome: dict[int, tuple] = {}
        for i, frame in enumerate(selected):
            done = _read_label(labels_dir, i, frame_key(frame))
            if done is not None:
                outcome[i] = done
        todo = [i for i in range(len(selected)) if i not in outcome]
        if len(todo) < len(selected):
            log.info("%d of %d labels already done", len(selected) - len(todo), len(selected))
        task = partial(label_frame, make_reference=self.make_reference)
        for j, ok, result in self.tasks.run(
            task, [selected[i] for i in todo], f"{gen_dir.name} labels"
        ):
            i = todo[j]
            atoms, reason = result if ok else (None, f"the label task failed ({result})")
            if atoms is None:
                log.warning(
                    "reference calculation failed for selected frame %d (skipped): %s", i, reason
                )
                if ok:  # the reference's verdict is kept; a lost worker's task is not
                    _write_atomic(labels_dir / f"{i:04d}.failed", reason)
            else:
                _write_atomic_frames(labels_dir / f"{i:04d}.xyz", [atoms])
            outcome[i] = (atoms, reason)
        labelled = [outcome[i][0] for i in sorted(outcome) if outcome[i][0] is not None]
        failures = [[i, outcome[i][1]] for i in sorted(outcome) if outcome[i][0] is None]
        _write_atomic_frames(gen_dir / "labelled.xyz", labelled)
        return labelled, failures

    def _external_labels(self, gen_dir: Path, selected: list):
        """``to_label.xyz`` for the user; their ``labelled.xyz`` once it is there, else None."""
        to_label = gen_dir / "to_label.xyz"
        if not to_label.exists():
            _write_atomic_frames(to_label, selected)
        labelled_path = gen_dir / "labelled.xyz"
        if not labelled_path.exists():
            return None
        return read_external_labels(labelled_path, selected)

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
            add(_read_frames(Path(summary["train_file"]).parent / "labelled.xyz"))
        n_new = add(labelled)
        path = gen_dir / "train.xyz"
        _write_atomic_frames(path, frames)
        return path, n_new


def read_external_labels(path: Path, selected: list):
    """The user's ``labelled.xyz``: every frame one of ``to_label.xyz``'s (atoms not moved), with
    a finite ``REF_energy`` (info, or the calculator's energy) and finite ``REF_forces`` (arrays,
    or the calculator's forces). Frames of ``to_label.xyz`` left out are recorded as failures."""
    wanted = {frame_key(a): i for i, a in enumerate(selected)}
    labelled, found = [], set()
    for j, atoms in enumerate(read_structures(path)):
        where = f"{path}: structure {j}"
        key = frame_key(atoms)
        if key not in wanted:
            raise ValueError(
                f"{where} is not one of to_label.xyz's frames (same atoms at the same positions "
                "to 1e-6 A and the same cell are needed)"
            )
        if ENERGY_KEY not in atoms.info or FORCES_KEY not in atoms.arrays:
            results = getattr(atoms.calc, "results", {}) or {}
            if "energy" not in results or "forces" not in results:
                raise ValueError(
                    f"{where} has no {ENERGY_KEY!r} in info / {FORCES_KEY!r} in arrays (nor a "
                    "calculator's energy and forces)"
                )
            atoms.info[ENERGY_KEY] = float(results["energy"])
            atoms.arrays[FORCES_KEY] = np.asarray(results["forces"], dtype=float)
        atoms.calc = None
        problem = frame_problem(atoms, FORCES_KEY)
        if problem is None and not np.isfinite(atoms.info[ENERGY_KEY]):
            problem = f"non-finite {ENERGY_KEY} {atoms.info[ENERGY_KEY]}"
        if problem:
            raise ValueError(f"{where}: {problem}")
        if key not in found:
            found.add(key)
            labelled.append(atoms)
    failures = [[i, "not in labelled.xyz"] for k, i in wanted.items() if k not in found]
    return labelled, sorted(failures)


def summary_rows(state: dict) -> list[dict]:
    """One row per generation (generation 0: the starting model's held-out scores)."""
    rows = []
    if "holdout_initial" in state:
        rows.append({"generation": 0, **_prefixed(state["holdout_initial"])})
    for g in state["generations"]:
        row = {
            k: g[k]
            for k in (
                "generation",
                "n_walkers",
                "n_selected",
                "n_labelled",
                "n_added",
                "n_failed",
                "mean_uncertainty",
                "max_uncertainty",
                "selected_mean_uncertainty",
            )
            if k in g
        }
        row.update(_prefixed(g.get("holdout", {})))
        rows.append(row)
    return rows


def _prefixed(scores: dict) -> dict:
    return {f"holdout_{k}": v for k, v in scores.items()}


def _read_label(labels_dir: Path, i: int, key: str):
    """A finished label of selected frame ``i`` (``(atoms, None)`` or ``(None, reason)``)."""
    done, failed = labels_dir / f"{i:04d}.xyz", labels_dir / f"{i:04d}.failed"
    if done.exists():
        atoms = ase.io.read(done)
        if frame_key(atoms) == key:
            return atoms, None
    elif failed.exists():
        return None, failed.read_text()
    return None


def _read_frames(path: Path) -> list:
    return ase.io.read(path, ":") if path.exists() and path.stat().st_size else []


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_atomic_frames(path: Path, frames: list) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    ase.io.write(tmp, frames, format="extxyz")
    os.replace(tmp, path)
