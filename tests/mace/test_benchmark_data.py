"""The benchmark's data generation: worker processes give the same files, in the same order, as
one process (every (split, molecule) job has its own seed). The GFN2-xTB walkers are replaced by
stand-ins whose frames record the job and its seed, so the test checks the bookkeeping, not
tblite (the benchmark's quick tests generate real data)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from ase import Atoms

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # `examples` is imported from the repository root
    sys.path.insert(0, str(REPO))

from examples.benchmark import data as bdata  # noqa: E402


def _frames(tag: str, n: int, seed: int, periodic: bool) -> list[Atoms]:
    rng = np.random.default_rng(seed)
    frames = []
    for k in range(n):
        atoms = Atoms("OH2", positions=rng.normal(size=(3, 3)), cell=np.eye(3) * 5, pbc=periodic)
        atoms.info["REF_energy"] = float(rng.normal())
        atoms.info["config_type"] = f"{tag}_{seed}_{k}"
        atoms.arrays["REF_forces"] = rng.normal(size=(3, 3))
        frames.append(atoms)
    return frames


def _stand_in_molecules(name, mol, temp, n, seed, settings):
    return _frames(f"{name}_{mol}_{temp:g}K", n, seed, periodic=False)


def _stand_in_water(name, temp, n, seed, settings):
    return _frames(f"{name}_water_{temp:g}K", n, seed, periodic=True)


def test_worker_processes_write_the_same_data_as_one_process(tmp_path, monkeypatch):
    monkeypatch.setattr(bdata, "_molecule_split", _stand_in_molecules)
    monkeypatch.setattr(bdata, "_water_split", _stand_in_water)
    monkeypatch.setattr(bdata.gd, "isolated_atom_energies", lambda elements: {"H": -10.0})
    settings = bdata.DataSettings(n_train=5, n_valid=2, n_test=3, n_hot=3, n_unseen=2)
    serial = bdata.generate(settings, tmp_path / "serial", jobs=1)
    parallel = bdata.generate(settings, tmp_path / "parallel", jobs=3)
    for split in ("train", "valid", *bdata.TEST_SPLITS):
        text = (tmp_path / "serial" / f"{split}.xyz").read_text()
        assert text, split
        assert (tmp_path / "parallel" / f"{split}.xyz").read_text() == text, split
    serial.pop("generation_seconds"), parallel.pop("generation_seconds")
    assert json.dumps(parallel, sort_keys=True) == json.dumps(serial, sort_keys=True)
    # the jobs keep the plan's order inside a split: molecules first, then the water box
    train = [f.info["config_type"] for f in bdata.read_split(tmp_path / "parallel", "train")]
    assert [t.split("_")[1] for t in train[:: settings.n_train]][:3] == list(
        settings.train_molecules
    )
    assert train[-1].startswith("train_water")
    assert len(train) == 3 * settings.n_train + settings.water_n_train
