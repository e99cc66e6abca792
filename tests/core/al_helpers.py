"""Picklable pieces of a toy active-learning loop (no framework): they run on Dask workers and
in a driver subprocess, so they live in an importable module, not in a test file."""

from __future__ import annotations

import os
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import ase.io
import torch
from ase.build import molecule
from ase.calculators.emt import EMT
from core_helpers import ToyBackbone, make_head

from eip_plugins.active_learning import ActiveLearningLoop, ALSettings, frame_key
from eip_plugins.ase_calculator import UncertaintyCalculator
from eip_plugins.core import UDDConfig
from eip_plugins.dynamics import MDSettings


class ToyUQCalculator(UncertaintyCalculator):
    """Harmonic pair energy + an e2ip head on a toy equivariant featuriser."""

    known_atomic_numbers = {1, 6, 8}

    def __init__(self, udd=None, **kwargs):
        super().__init__(udd=udd, **kwargs)
        # the same parameters whatever the process's default dtype: Dask workers (float32) and a
        # pytest session whose framework fixtures set float64 must compute the same numbers
        default = torch.get_default_dtype()
        torch.set_default_dtype(torch.float32)
        try:
            self.backbone = ToyBackbone().double()
            self.head = make_head("e2ip", self.backbone.irreps_out, seed=3).double().eval()
        finally:
            torch.set_default_dtype(default)
        self.r0 = None

    def evaluate_model(self, atoms, keep_graph):
        pos = torch.tensor(atoms.get_positions(), dtype=torch.float64, requires_grad=True)
        d = torch.cdist(pos, pos) + torch.eye(len(pos), dtype=torch.float64)
        if self.r0 is None:
            self.r0 = d.detach().clone()
        energy = 0.5 * ((d - self.r0) ** 2).triu(1).sum()
        (grad,) = torch.autograd.grad(energy, pos, create_graph=keep_graph)
        forces = -grad
        params, distance_sq = self.head.forward_with_distance(self.backbone(pos), forces)
        out = self.head.fields(params, torch.zeros(len(pos), dtype=torch.long), 1, distance_sq)
        out.update(energy=energy, forces=forces, positions=pos)
        return out


def toy_calculator(model, udd):
    """``make_calculator`` of the toy loop (the model path is not read)."""
    return ToyUQCalculator(udd=udd)


def toy_retrain(train_file, gen_dir, generation, model):
    """A retrainer that only writes a model file naming its training set."""
    out = Path(gen_dir) / "model.txt"
    out.write_text(f"trained on {train_file}")
    return str(out)


@dataclass(frozen=True)
class CountingEMT:
    """EMT reference that records every call (one file in ``calls_dir`` each); on call number
    ``hang_on_call`` it touches ``marker`` and hangs, so that a test can kill the driver."""

    calls_dir: str
    hang_on_call: int = 0
    marker: str = ""

    def __call__(self):
        calls = Path(self.calls_dir)
        calls.mkdir(parents=True, exist_ok=True)
        (calls / uuid.uuid4().hex).touch()
        if self.hang_on_call and len(list(calls.iterdir())) == self.hang_on_call:
            Path(self.marker).touch()
            time.sleep(120)
        return EMT()

    def count(self) -> int:
        calls = Path(self.calls_dir)
        return len(list(calls.iterdir())) if calls.exists() else 0


@dataclass(frozen=True)
class KillWorkerOnce:
    """Call ``inner``, except the first time (``marker`` absent): then the process running it
    (a Dask worker) kills itself with SIGKILL."""

    inner: object
    marker: str

    def __call__(self, *args):
        if not os.path.exists(self.marker):
            Path(self.marker).touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return self.inner(*args)


def base_training_set(path, n=5):
    frames = []
    for i in range(n):
        a = molecule("CH3CH2OH")
        a.rattle(0.02, seed=100 + i)
        a.calc = EMT()
        a.info["REF_energy"] = a.get_potential_energy()
        a.arrays["REF_forces"] = a.get_forces()
        a.calc = None
        frames.append(a)
    ase.io.write(path, frames, format="extxyz")


def start_structures():
    """Two start structures, so walkers start from different places."""
    frames = [molecule("CH3CH2OH"), molecule("CH3CH2OH")]
    frames[1].rattle(0.05, seed=7)
    return frames


def toy_settings(generations=2, walkers=4) -> ALSettings:
    return ALSettings(
        generations=generations,
        walkers=walkers,
        dynamics="udd",
        md=MDSettings(steps=30, record_every=2, timestep_fs=0.5),
        udd=UDDConfig(A=1.0, B=0.05),
        max_frames=5,
        min_spacing=2,
    )


def toy_loop(
    workdir, train, reference, tasks=None, settings=None, make_calculator=None, holdout=None
):
    return ActiveLearningLoop(
        workdir,
        "model0",
        train,
        start_structures(),
        make_calculator or toy_calculator,
        toy_retrain,
        reference,
        settings or toy_settings(),
        tasks=tasks,
        holdout=holdout,
    )


def final_training_set(workdir, generations=2) -> list[tuple[str, float]]:
    """(frame key, reference energy) of the last generation's training set, in order."""
    frames = ase.io.read(Path(workdir) / f"gen_{generations:03d}" / "train.xyz", ":")
    return [(frame_key(a), round(a.info["REF_energy"], 10)) for a in frames]
