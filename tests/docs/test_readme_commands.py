"""The README's commands run as written (issue: documentation tested in CI).

Every ``bash`` and ``python`` block of README.md and the two adapter READMEs (see
``markdown_blocks.DOCUMENTS``) runs here, in the environment its ``<!-- docs-test: ... -->``
line names, with the console scripts of that environment on ``PATH``. The blocks of one
environment share one fresh folder outside the repository, holding what every block assumes the
user has: ``train.xyz``, ``valid.xyz``, ``test.xyz`` (extxyz, ``REF_energy``/``REF_forces``) —
here the first 100 / 20 / 20 frames of the shipped ``examples/data/ethanol_{train,valid,
test_300K}.xyz``. A block that fails fails the suite; blocks run in document order.

In the MACE environment this module runs the blocks marked ``mace``, in the NequIP environment
those marked ``nequip``; the directives themselves are checked in both.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import ase.io
import pytest
from markdown_blocks import DOCUMENTS, REPO, all_blocks, read_blocks

DATA = REPO / "examples" / "data"
SCRATCH_DATA = {  # file in the folder: (shipped file, frames)
    "train.xyz": ("ethanol_train.xyz", 100),
    "valid.xyz": ("ethanol_valid.xyz", 20),
    "test.xyz": ("ethanol_test_300K.xyz", 20),
}
BIN = Path(sys.executable).parent
PLAIN_NEQUIP_CONFIGS = REPO / "examples" / "benchmark" / "nequip_configs"

#: what a block may assume the user already has; made once per folder, before the block
PREREQUISITES = {
    # a MACE model trained without --head: plain.model
    "plain-mace": (
        "mace_run_train --name=plain --train_file=train.xyz --valid_file=valid.xyz "
        "--energy_key=REF_energy --forces_key=REF_forces --E0s=average --model=MACE "
        "--hidden_irreps='16x0e + 16x1o' --r_max=4.0 --max_num_epochs=2"
    ),
    # a NequIP checkpoint trained without a head: outputs/plain/best.ckpt
    "plain-nequip": (
        f"nequip-train -cp {PLAIN_NEQUIP_CONFIGS} -cn plain ++train_file=train.xyz "
        "++val_file=valid.xyz ++test_file=test.xyz '++run=[train]' ++max_epochs=2 "
        "++training_module.model.num_layers=2 ++training_module.model.num_features=16 "
        "hydra.run.dir=outputs/plain"
    ),
}


def _environment() -> str | None:
    """The framework installed here, by its distribution (``tests/mace`` on ``sys.path`` would
    pass for a ``mace`` namespace package)."""
    for name, distribution in (("mace", "mace-torch"), ("nequip", "nequip")):
        try:
            importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
        return name
    return None


ENVIRONMENT = _environment()
BLOCKS = [b for b in all_blocks() if b.environment is not None and b.environment == ENVIRONMENT]


def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["OMP_NUM_THREADS"] = "1"  # one thread per process on the shared 2-core machines
    env.pop("PYTHONPATH", None)  # as a user's shell: the installed package, not the test tree
    return env


def _run(language: str, code: str, cwd: Path, name: str) -> None:
    if language == "python":
        cmd = [sys.executable, "-c", code]
    else:
        cmd = ["bash", "-euo", "pipefail", "-c", code]
    proc = subprocess.run(
        cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=1200, check=False
    )
    if proc.returncode != 0:
        pytest.fail(
            f"{name} failed (exit {proc.returncode}) in {cwd}:\n{code}\n--- stdout (end) ---\n"
            f"{proc.stdout[-3000:]}\n--- stderr (end) ---\n{proc.stderr[-5000:]}",
            pytrace=False,
        )


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory) -> dict:
    """A fresh folder outside the repository with the user's data files."""
    folder = tmp_path_factory.mktemp(f"docs_{ENVIRONMENT}")
    for name, (source, frames) in SCRATCH_DATA.items():
        ase.io.write(folder / name, ase.io.read(DATA / source, f":{frames}"), format="extxyz")
    return {"path": folder, "made": set()}


def test_every_block_has_a_readable_directive():
    """Both environments: no block without a directive, no stale substitution, no unknown
    prerequisite, and each environment has blocks to run."""
    blocks = all_blocks()
    for block in blocks:
        block.runnable_code()  # raises when a substitution no longer matches
        for need in block.needs:
            assert need in PREREQUISITES, f"{block.name}: unknown needs={need}"
    for environment in ("mace", "nequip"):
        assert any(b.environment == environment for b in blocks), environment
    for document in DOCUMENTS:
        assert read_blocks(document), f"{document} has no code block"


@pytest.mark.skipif(ENVIRONMENT is None, reason="neither framework is installed")
@pytest.mark.parametrize("block", BLOCKS, ids=[b.name for b in BLOCKS])
def test_documented_block_runs(block, user_folder):
    folder = user_folder["path"]
    for need in block.needs:
        if need not in user_folder["made"]:
            _run("bash", PREREQUISITES[need], folder, f"prerequisite {need} of {block.name}")
            user_folder["made"].add(need)
    _run(block.language, block.runnable_code(), folder, block.name)
