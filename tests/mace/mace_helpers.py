"""Helpers of the MACE suite: run MACE's real console scripts in the MACE environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import ase.io

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "examples" / "data"
BIN = Path(sys.executable).parent
MACE_RUN_TRAIN = str(BIN / "mace_run_train")
MACE_EVAL_CONFIGS = str(BIN / "mace_eval_configs")

# A small but real MACE: two layers, 16 channels, l_max = 1.
MODEL_ARGS = [
    "--model=MACE",
    "--hidden_irreps=16x0e+16x1o",
    "--r_max=4.0",
    "--num_interactions=2",
    "--correlation=2",
    "--max_ell=1",
    "--num_radial_basis=6",
]
COMMON_ARGS = [
    "--energy_key=REF_energy",
    "--forces_key=REF_forces",
    "--E0s=average",
    "--batch_size=10",
    "--valid_batch_size=50",
    "--device=cpu",
    "--default_dtype=float32",
    "--seed=3",
    "--lr=0.01",
    "--plot=False",
    "--num_workers=0",
]


def cli_env(disable: bool = False, **extra) -> dict:
    env = dict(os.environ)
    env.pop("EIP_PLUGINS_DISABLE", None)
    if disable:
        env["EIP_PLUGINS_DISABLE"] = "1"
    env.update({"OMP_NUM_THREADS": "2", "PYTHONWARNINGS": "ignore", **extra})
    return env


def run_cli(cmd: list[str], cwd: Path, env: dict | None = None, timeout: int = 600, check=True):
    proc = subprocess.run(
        [str(c) for c in cmd],
        cwd=cwd,
        env=env or cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
        )
    return proc


def train_command(data: dict, name: str, extra: list[str]) -> list[str]:
    return [
        MACE_RUN_TRAIN,
        f"--name={name}",
        f"--train_file={data['train']}",
        f"--valid_file={data['valid']}",
        *MODEL_ARGS,
        *COMMON_ARGS,
        *extra,
    ]


def train(workdir: Path, data: dict, name: str, extra: list[str], env=None, check=True):
    """Run ``mace_run_train`` in ``workdir``; returns the CompletedProcess."""
    workdir.mkdir(parents=True, exist_ok=True)
    return run_cli(train_command(data, name, extra), workdir, env, check=check)


def run_parallel(jobs: list[tuple[list, Path, dict]], timeout: int = 1200) -> None:
    """Run ``(cmd, cwd, env)`` jobs concurrently (give each ``OMP_NUM_THREADS=1``); raise with the
    stderr tail of the first that fails. Output goes to ``cwd/cli_stdout.txt`` / ``cli_stderr.txt``."""
    procs = []
    for cmd, cwd, env in jobs:
        cwd.mkdir(parents=True, exist_ok=True)
        out = open(cwd / "cli_stdout.txt", "w")  # noqa: SIM115 - closed below
        err = open(cwd / "cli_stderr.txt", "w")  # noqa: SIM115
        proc = subprocess.Popen([str(c) for c in cmd], cwd=cwd, env=env, stdout=out, stderr=err)
        procs.append((proc, out, err, cmd, cwd))
    failures = []
    for proc, out, err, cmd, cwd in procs:
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = "timeout"
        out.close()
        err.close()
        if code != 0:
            tail = (cwd / "cli_stderr.txt").read_text()[-4000:]
            failures.append(f"{' '.join(map(str, cmd))} failed ({code}):\n{tail}")
    if failures:
        raise AssertionError("\n\n".join(failures))


def eval_command(model: Path, configs: Path, output: str) -> list[str]:
    return [
        MACE_EVAL_CONFIGS,
        f"--model={model}",
        f"--configs={configs}",
        f"--output={output}",
        "--default_dtype=float32",
        "--batch_size=50",
    ]


def evaluate(workdir: Path, model: Path, configs: Path, output: str, env=None) -> list:
    run_cli(eval_command(model, configs, output), workdir, env)
    return ase.io.read(workdir / output, index=":")


def log_text(workdir: Path, name: str, seed: int = 3) -> str:
    return (workdir / "logs" / f"{name}_run-{seed}.log").read_text()


def results(stdout: str) -> list[str]:
    """Lines a subprocess printed with ``print("@@", ...)`` (MACE prints to stdout as well)."""
    return [line[3:] for line in stdout.splitlines() if line.startswith("@@ ")]


def feature_distances(model_path, frames):
    """The model's per-atom feature distance r over ``frames``, (sum of atoms,), float64."""
    import numpy as np

    from eip_plugins.core import keys
    from eip_plugins.mace import MACEUQCalculator

    calc = MACEUQCalculator(model_paths=str(model_path), default_dtype="float64")
    return np.concatenate(
        [calc.get_property(keys.FORCES_FEATURE_DISTANCE, atoms.copy()) for atoms in frames]
    )
