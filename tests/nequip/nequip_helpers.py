"""Helpers of the NequIP suite: console-script runs and a small in-process model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from calculator_checks import calculator_results  # noqa: F401 - re-exported for the NequIP tests
from nequip.data import AtomicDataDict, from_ase
from nequip.data.transforms import ChemicalSpeciesToAtomTypeMapper, NeighborListTransform
from nequip.utils.global_state import set_global_state

from eip_plugins.nequip import EvidentialNequIPGNNModel

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "examples" / "data"
BIN = Path(sys.executable).parent
NEQUIP_TRAIN = str(BIN / "nequip-train")
NEQUIP_COMPILE = str(BIN / "nequip-compile")
NEQUIP_PACKAGE = str(BIN / "nequip-package")

# A small but real NequIP: 2 interaction layers (the head reads the first), l_max = 1.
SMALL_MODEL = [
    "++training_module.model.num_layers=2",
    "++training_module.model.num_features=16",
    "++training_module.model.radial_mlp_depth=1",
    "++training_module.model.radial_mlp_width=32",
    "++head_options.hidden=16",
]
EPOCHS = {"e2ip": 6, "eip": 2, "mve": 3}
# heads trained with the papers' force objective (the evidential NLL trains the model); the
# others use the default, detached
NLL_OBJECTIVE = {"eip": ["++head_options.force_objective=nll"]}


def cli_env(**extra) -> dict:
    env = dict(os.environ)
    # one thread per process: the 2-core machines are usually shared, and oversubscribed
    # OpenMP threads slow training down far more than one thread per process does
    env.update({"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **extra})
    return env


def run_cli(cmd, cwd: Path, env: dict | None = None, timeout: int = 900, check: bool = True):
    """Run a console script; on failure show the end of its output."""
    proc = subprocess.run(
        [str(c) for c in cmd],
        cwd=str(cwd),
        env=env or cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd[0]} failed ({proc.returncode}):\n{proc.stdout[-6000:]}")
    return proc


def run_parallel(jobs: list[tuple[list, Path]], timeout: int = 1200) -> None:
    """Run ``(cmd, cwd)`` jobs concurrently, one thread each (output in ``cwd/output.txt``);
    raise with the output of the first that fails."""
    procs = []
    for cmd, cwd in jobs:
        cwd.mkdir(parents=True, exist_ok=True)
        log = open(cwd / "output.txt", "w")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            [str(c) for c in cmd], cwd=cwd, env=cli_env(), stdout=log, stderr=log
        )
        procs.append((proc, log, cwd))
    failures = []
    for proc, log, cwd in procs:
        code = proc.wait(timeout=timeout)
        log.close()
        if code != 0:
            failures.append((cwd / "output.txt").read_text()[-6000:])
    if failures:
        raise AssertionError("\n\n".join(failures))


def train_args(run_dir: Path, head: str, epochs: int, *extra) -> list:
    return [
        NEQUIP_TRAIN,
        "-cn",
        "config_with_eip",  # shipped in the package, found through Hydra's search path
        f"++train_file={DATA / 'ethanol_train.xyz'}",
        f"++val_file={DATA / 'ethanol_valid.xyz'}",
        f"++test_file={DATA / 'ethanol_test_300K.xyz'}",
        "++model_type_names=[C,H,O]",
        f"++max_epochs={epochs}",
        f"++head={head}",
        f"hydra.run.dir={run_dir}",
        *SMALL_MODEL,
        *extra,
    ]


PLAIN_CONFIG_DIR = REPO / "examples" / "benchmark" / "nequip_configs"


def plain_train_args(run_dir: Path, epochs: int, *extra) -> list:
    """``nequip-train`` of a plain model: the benchmark's plain config (``config_with_eip``
    without the head, NequIP's ``EnergyForceLoss``) on the ethanol files, training only."""
    return [
        BIN / "nequip-train",
        "-cp",
        PLAIN_CONFIG_DIR,
        "-cn",
        "plain",
        f"++train_file={DATA / 'ethanol_train.xyz'}",
        f"++val_file={DATA / 'ethanol_valid.xyz'}",
        f"++test_file={DATA / 'ethanol_test_300K.xyz'}",
        "++run=[train]",
        f"++max_epochs={epochs}",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]


def compile_args(ckpt: Path, out: Path, target: str = "ase_uq") -> list:
    return [
        NEQUIP_COMPILE,
        ckpt,
        out,
        "--mode",
        "aotinductor",
        "--device",
        "cpu",
        "--target",
        target,
    ]


TYPES = ["C", "H", "O"]


def build_model(head: str, dtype: str = "float64", **options):
    """A small evidential NequIP model built in-process (untrained)."""
    set_global_state(allow_tf32=False)
    return EvidentialNequIPGNNModel(
        seed=7,
        model_dtype=dtype,
        type_names=TYPES,
        r_max=4.0,
        num_layers=2,
        l_max=1,
        num_features=8,
        radial_mlp_width=16,
        avg_num_neighbors=8.0,
        per_type_energy_shifts={"C": -40.0, "H": -12.0, "O": -80.0},
        per_type_energy_scales=1.0,
        head=head,
        head_options={"hidden": 8, **options},
    )


def to_data(frames) -> AtomicDataDict.Type:
    """Batch of ASE frames with REF_energy / REF_forces labels, as NequIP's data pipeline does."""
    mapper = ChemicalSpeciesToAtomTypeMapper(model_type_names=TYPES)
    neighbors = NeighborListTransform(r_max=4.0)
    data = []
    for atoms in frames:
        d = from_ase(atoms)
        d[AtomicDataDict.TOTAL_ENERGY_KEY] = torch.tensor([[atoms.info["REF_energy"]]])
        d[AtomicDataDict.FORCE_KEY] = torch.as_tensor(atoms.arrays["REF_forces"])
        data.append(neighbors(mapper(d)))
    return AtomicDataDict.batched_from_list(data)
