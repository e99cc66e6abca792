"""ASE molecular dynamics that records energy, temperature and uncertainty along the way."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field

import numpy as np
from ase import Atoms, units
from ase.constraints import FixCom
from ase.md.langevin import Langevin
from ase.md.nvtberendsen import NVTBerendsen
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary, ZeroRotation
from tqdm.auto import tqdm

log = logging.getLogger(__name__)
THERMOSTATS = ("langevin", "berendsen")


@dataclass
class MDSettings:
    """NVT MD settings.

    Attributes:
        steps: number of MD steps.
        timestep_fs: time step, fs.
        temperature_K: thermostat temperature, K.
        thermostat: ``"langevin"`` or ``"berendsen"``.
        friction_per_fs: Langevin friction, 1/fs.
        taut_fs: Berendsen coupling time, fs.
        record_every: keep a frame and a log row every this many steps.
        seed: seed of the initial velocities and of the Langevin noise.
        max_temperature_K: stop (and flag the run as unstable) above this temperature.
    """

    steps: int = 1000
    timestep_fs: float = 0.5
    temperature_K: float = 300.0
    thermostat: str = "langevin"
    friction_per_fs: float = 0.02
    taut_fs: float = 50.0
    record_every: int = 10
    seed: int = 0
    max_temperature_K: float = 5000.0

    def __post_init__(self) -> None:
        if self.thermostat not in THERMOSTATS:
            raise ValueError(f"invalid thermostat={self.thermostat!r}: one of {THERMOSTATS}")
        for name in ("steps", "record_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"invalid {name}={getattr(self, name)!r}: must be >= 1")
        for name in ("timestep_fs", "temperature_K", "friction_per_fs", "taut_fs"):
            if not getattr(self, name) > 0:
                raise ValueError(f"invalid {name}={getattr(self, name)!r}: must be > 0")


@dataclass
class MDTrajectory:
    """Recorded frames and per-frame log of one MD run.

    ``log`` columns (arrays of length T): step, time_fs, energy (eV, unbiased potential energy),
    bias_energy (eV), temperature_K, uncertainty (mean sigma_i, eV/A), uncertainty_max (eV/A),
    feature_distance and feature_distance_max (mean / max r_i, the feature distance to the
    training atoms; 0 for a model without feature statistics).
    """

    frames: list[Atoms] = field(default_factory=list)
    log: dict[str, np.ndarray] = field(default_factory=dict)
    stable: bool = True

    def write_log(self, path) -> None:
        cols = list(self.log)
        np.savetxt(path, np.column_stack([self.log[c] for c in cols]), header=" ".join(cols))


def run_md(
    atoms: Atoms, calculator, settings: MDSettings, progress: bool | None = None
) -> MDTrajectory:
    """Run NVT MD of ``atoms`` (copied) with an uncertainty calculator.

    The calculator may be biased (UDD); the recorded ``energy`` is then the unbiased potential
    energy and ``bias_energy`` the bias. A progress bar is shown when ``progress`` is True (default:
    when standard error is a terminal). The run stops early, with ``stable = False``, if energies
    or positions become non-finite or the temperature exceeds ``settings.max_temperature_K``.
    """
    atoms = atoms.copy()
    atoms.calc = calculator
    user_constraints = list(atoms.constraints)  # recorded frames keep these, not our FixCom
    rng = np.random.default_rng(settings.seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=settings.temperature_K, rng=rng)
    Stationary(atoms)
    if not atoms.pbc.any():
        ZeroRotation(atoms)
    dt = settings.timestep_fs * units.fs
    if settings.thermostat == "langevin":
        # the centre of mass is held by a constraint: Langevin's own `fixcm=True` is deprecated
        # (ASE 3.28) as it does not sample NVT exactly
        atoms.set_constraint([*atoms.constraints, FixCom()])
        dyn = Langevin(
            atoms,
            dt,
            temperature_K=settings.temperature_K,
            friction=settings.friction_per_fs / units.fs,
            fixcm=False,
            rng=np.random.default_rng(settings.seed + 1),
        )
    else:
        dyn = NVTBerendsen(
            atoms, dt, temperature_K=settings.temperature_K, taut=settings.taut_fs * units.fs
        )
    traj = MDTrajectory()
    rows: dict[str, list] = {
        k: []
        for k in (
            "step",
            "time_fs",
            "energy",
            "bias_energy",
            "temperature_K",
            "uncertainty",
            "uncertainty_max",
            "feature_distance",
            "feature_distance_max",
        )
    }
    if progress is None:
        progress = sys.stderr.isatty()
    bar = tqdm(total=settings.steps, disable=not progress, desc="MD", leave=False)

    def record(step: int) -> bool:
        res = calculator.results
        energy = res["energy"] - res.get("udd_bias_energy", 0.0)
        temperature = atoms.get_temperature()
        values = (
            step,
            step * settings.timestep_fs,
            energy,
            res.get("udd_bias_energy", 0.0),
            temperature,
            res["uncertainty"],
            res["uncertainty_max"],
            res.get("feature_distance", 0.0),
            res.get("feature_distance_max", 0.0),
        )
        for key, value in zip(rows, values, strict=True):
            rows[key].append(value)
        frame = atoms.copy()
        frame.calc = None
        frame.set_constraint([c.copy() for c in user_constraints])
        frame.info.update({k: rows[k][-1] for k in list(rows)[5:]})
        traj.frames.append(frame)
        ok = np.isfinite(atoms.get_positions()).all() and np.isfinite(energy)
        return bool(ok and temperature < settings.max_temperature_K)

    atoms.get_forces()
    record(0)
    for step in range(1, settings.steps + 1):
        dyn.run(1)
        bar.update(1)
        if step % settings.record_every == 0 or step == settings.steps:
            if not record(step):
                log.warning("MD became unstable at step %d; stopping this run", step)
                traj.stable = False
                break
    bar.close()
    traj.log = {k: np.asarray(v, dtype=float) for k, v in rows.items()}
    return traj
