"""Shared fixtures of the NequIP suite: real ``nequip-train`` / ``nequip-compile`` runs.

Training and AOTInductor compilation go through NequIP's console scripts (subprocesses) and are
shared through session-scoped fixtures: one compile per head for the whole suite (about a
minute and a half each on 2 CPU cores).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

# NequIP's unit-test fixtures (molecules, atomic_batch, Cu_bulk, model_dtype, ...) for the
# harness in test_model_harness.py.
from nequip.utils.unittests.conftest import (  # noqa: F401
    BENCHMARK_ROOT,
    CH3CHO,
    CH3CHO_no_typemap,
    Cu_bulk,
    atomic_batch,
    diamond_carbon,
    model_dtype,
    molecules,
    nequip_dataset,
    temp_data,
)
from nequip_helpers import BIN, DATA, EPOCHS, NLL_OBJECTIVE, compile_args, run_cli, train_args


@pytest.fixture(scope="session", autouse=True)
def _console_scripts_on_path():
    """NequIP's harness runs `nequip-train` / `nequip-package` / `nequip-compile` by name."""
    old = os.environ.get("PATH", "")
    os.environ["PATH"] = f"{BIN}{os.pathsep}{old}"
    yield
    os.environ["PATH"] = old


@pytest.fixture(scope="session", autouse=True)
def default_dtype():
    """NequIP's harness tests run with float64 as the default dtype (models set their own).

    Overrides NequIP's fixture of the same name; only this directory's tests see it, and the
    previous default is restored at the end of the session.
    """
    from nequip.utils.global_state import set_global_state

    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    set_global_state(allow_tf32=False)
    yield torch.float64
    torch.set_default_dtype(old)


class Runs:
    """Lazily trains and compiles one model per head, once per session."""

    def __init__(self, root: Path):
        self.root = root
        self._trained: dict[str, Path] = {}
        self._compiled: dict[str, Path] = {}

    def trained(self, head: str) -> Path:
        if head not in self._trained:
            run_dir = self.root / f"train_{head}"
            extra = NLL_OBJECTIVE.get(head, [])
            proc = run_cli(train_args(run_dir, head, EPOCHS[head], *extra), cwd=self.root)
            (run_dir / "stdout.txt").write_text(proc.stdout)
            self._trained[head] = run_dir
        return self._trained[head]

    def compiled(self, head: str) -> Path:
        if head not in self._compiled:
            run_dir = self.trained(head)
            out = run_dir / "model.nequip.pt2"
            run_cli(compile_args(run_dir / "best.ckpt", out), cwd=run_dir)
            self._compiled[head] = out
        return self._compiled[head]


@pytest.fixture(scope="session")
def runs(tmp_path_factory) -> Runs:
    root = tmp_path_factory.mktemp("nequip_runs")
    yield Runs(root)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def ethanol_300K():
    import ase.io

    return ase.io.read(DATA / "ethanol_test_300K.xyz", ":")


@pytest.fixture(scope="session")
def ethanol_1200K():
    import ase.io

    return ase.io.read(DATA / "ethanol_test_1200K.xyz", ":")
