"""Shared fixtures of the MACE suite: small data sets and real ``mace_run_train`` runs.

Every training run goes through MACE's real console scripts (subprocess) in the MACE
environment; trained models are shared through session-scoped fixtures so the whole suite stays
within a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import ase.io
import pytest
from mace_helpers import DATA, cli_env, eval_command, log_text, run_parallel, train_command


@pytest.fixture(scope="session")
def data(tmp_path_factory) -> dict:
    """Subsets of the shipped GFN2-xTB ethanol data (300 K train/valid/test, 1200 K test)."""
    out = tmp_path_factory.mktemp("data")
    sizes = {
        "train": ("ethanol_train.xyz", 150),
        "valid": ("ethanol_valid.xyz", 30),
        "test_300K": ("ethanol_test_300K.xyz", 60),
        "test_1200K": ("ethanol_test_1200K.xyz", 60),
        "tiny_train": ("ethanol_train.xyz", 40),
        "tiny_valid": ("ethanol_valid.xyz", 10),
    }
    paths = {}
    for key, (name, n) in sizes.items():
        frames = ase.io.read(DATA / name, index=f":{n}")
        assert len(frames) == n, f"{DATA / name} has fewer than {n} frames"
        paths[key] = out / f"{key}.xyz"
        ase.io.write(paths[key], frames, format="extxyz")
    return paths


HEAD_RUNS = {  # head: (epochs, extra flags)
    "e2ip": (5, ["--ema", "--ema_decay=0.9"]),
    # the SPEC §1c form of the evidence factor, the CE objective of the recalibration, the
    # Gaussian distance alone and the papers' force objective (the evidential NLL trains the model)
    "eip": (
        5,
        [
            "--eip_density_power=1",
            "--eip_recalibrate=ce",
            "--eip_density_neighbours=0",
            "--eip_force_objective=nll",
        ],
    ),
    "mve": (3, ["--swa", "--start_swa=2"]),  # stage two (SWA) from epoch 2 of 3
}


@pytest.fixture(scope="session")
def head_runs(tmp_path_factory, data) -> dict:
    """e2ip (with EMA), eip, mve (with stage two) trained concurrently, single-threaded (bitwise
    reproducible), each evaluated with ``mace_eval_configs`` on the 300 K and 1200 K test sets."""
    env = cli_env(OMP_NUM_THREADS="1")
    runs, jobs = {}, []
    for head, (epochs, extra) in HEAD_RUNS.items():
        workdir = tmp_path_factory.mktemp(f"run_{head}")
        flags = [f"--head={head}", f"--max_num_epochs={epochs}", f"--test_file={data['test_300K']}"]
        jobs.append((train_command(data, head, [*flags, *extra]), workdir, env))
        runs[head] = {
            "workdir": workdir,
            "name": head,
            "flags": [*flags, *extra],
            "model": workdir / f"{head}.model",
            "compiled": workdir / f"{head}_compiled.model",
        }
    run_parallel(jobs)
    evals = []
    for head, run in runs.items():
        run["log"] = log_text(run["workdir"], head)
        for key in ("test_300K", "test_1200K"):
            cmd = eval_command(run["model"], data[key], f"eval_{key}.xyz")
            evals.append((cmd, run["workdir"] / f"eval_{key}", env))
    run_parallel(evals)
    for run in runs.values():
        for key in ("test_300K", "test_1200K"):
            path = run["workdir"] / f"eval_{key}" / f"eval_{key}.xyz"
            run[key] = ase.io.read(path, index=":")
    return runs


@pytest.fixture(scope="session")
def e2ip_run(head_runs) -> dict:
    return head_runs["e2ip"]


@pytest.fixture(scope="session")
def eip_run(head_runs) -> dict:
    return head_runs["eip"]


@pytest.fixture(scope="session")
def mve_run(head_runs) -> dict:
    return head_runs["mve"]


VARIANTS = {"disabled": ([], True), "default": ([], False), "none": (["--head=none"], False)}


@pytest.fixture(scope="session")
def plain_runs(tmp_path_factory, data) -> dict:
    """Plain MACE (same seed): hook disabled, no ``--head``, ``--head=none``; trained concurrently
    and single-threaded, which makes MACE's CPU training bitwise reproducible."""
    small = {"train": data["tiny_train"], "valid": data["tiny_valid"]}
    runs, jobs = {}, []
    for variant, (extra, disable) in VARIANTS.items():
        workdir = tmp_path_factory.mktemp(f"plain_{variant}")
        env = cli_env(disable=disable, OMP_NUM_THREADS="1")
        jobs.append((train_command(small, "plain", ["--max_num_epochs=2", *extra]), workdir, env))
        runs[variant] = {"workdir": workdir, "env": env}
    run_parallel(jobs)
    run_parallel(
        [
            (
                eval_command(r["workdir"] / "plain.model", data["tiny_valid"], "eval.xyz"),
                r["workdir"] / "eval",
                r["env"],
            )
            for r in runs.values()
        ]
    )
    for run in runs.values():
        run["frames"] = ase.io.read(run["workdir"] / "eval" / "eval.xyz", index=":")
    return runs
