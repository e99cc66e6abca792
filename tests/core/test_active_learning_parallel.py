"""Active learning past one process: walkers and labels as Dask tasks on a LocalCluster, runs
killed (a worker, the driver) and resumed, external labelling, PySCF and user references.

The toy loop (al_helpers: a toy e2ip calculator, EMT labels, a retrainer that writes a file)
keeps these tests framework-free; the runs through mace_run_train and nequip-train are in the
framework suites.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import ase.io
import numpy as np
import pytest
from al_helpers import (
    CountingEMT,
    KillWorkerOnce,
    base_training_set,
    final_training_set,
    toy_calculator,
    toy_loop,
    toy_settings,
)
from ase.build import molecule
from ase.calculators.emt import EMT

from eip_plugins.active_learning import (
    DaskTasks,
    PySCFReference,
    frame_key,
    label_frame,
    load_reference,
    open_client,
)

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def client():
    """A LocalCluster of 2 single-threaded worker processes, shared by this module."""
    with open_client(workers=2, threads_per_worker=1) as c:
        yield c


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """2 generations x 4 walkers in this process, never interrupted: the reference result."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    base_training_set(tmp / "train.xyz")
    reference = CountingEMT(str(tmp / "calls"))
    holdout = ase.io.read(tmp / "train.xyz", ":")
    state = toy_loop(tmp / "al", tmp / "train.xyz", reference, holdout=holdout).run()
    return {
        "state": state,
        "train": final_training_set(tmp / "al"),
        "calls": reference.count(),
        "workdir": tmp / "al",
    }


def test_uninterrupted_run_has_four_walkers_per_generation_and_a_summary(uninterrupted):
    state, workdir = uninterrupted["state"], uninterrupted["workdir"]
    for g in state["generations"]:
        walkers = g["walkers"]
        assert [w["walker"] for w in walkers] == [0, 1, 2, 3]
        assert [w["start_index"] for w in walkers] == [0, 1, 0, 1]  # the two starts in turn
        assert len({w["seed"] for w in walkers}) == 4
        assert 0 < g["n_selected"] <= 5 and g["n_labelled"] == g["n_selected"]
    keys = [k for k, _ in uninterrupted["train"]]
    assert len(keys) == len(set(keys))
    assert len(keys) == 5 + sum(g["n_added"] for g in state["generations"])
    rows = json.loads((workdir / "al_summary.json").read_text())
    assert [r["generation"] for r in rows] == [0, 1, 2]
    # the held-out set is the EMT-labelled training set; the toy model never learns
    assert rows[0]["holdout_force_mae"] == pytest.approx(rows[2]["holdout_force_mae"])
    assert all(r["holdout_mean_sigma"] > 0 for r in rows)
    assert rows[1]["mean_uncertainty"] > 0 and (workdir / "al_summary.png").stat().st_size > 0


def test_walkers_and_labels_on_a_local_cluster_give_the_same_training_set(
    client, uninterrupted, tmp_path
):
    base_training_set(tmp_path / "train.xyz")
    reference = CountingEMT(str(tmp_path / "calls"))
    state = toy_loop(tmp_path / "al", tmp_path / "train.xyz", reference, DaskTasks(client)).run()
    assert final_training_set(tmp_path / "al") == uninterrupted["train"]
    assert [g["n_walkers"] for g in state["generations"]] == [4, 4]
    assert reference.count() == uninterrupted["calls"]  # each frame labelled once


def test_killed_workers_are_replaced_and_the_run_gives_the_same_training_set(
    client, uninterrupted, tmp_path
):
    """A worker dies in a walker and another in a label task: Dask runs both again."""
    base_training_set(tmp_path / "train.xyz")
    driver = os.getpid()

    class NotInDriver(KillWorkerOnce):  # the driver creates the reference once to check it
        def __call__(self, *args):
            if os.getpid() == driver:
                return self.inner(*args)
            return super().__call__(*args)

    calculator = NotInDriver(toy_calculator, str(tmp_path / "walker_killed"))
    reference = NotInDriver(EMT, str(tmp_path / "label_killed"))
    n_workers = len(client.scheduler_info()["workers"])
    state = toy_loop(
        tmp_path / "al", tmp_path / "train.xyz", reference, DaskTasks(client),
        make_calculator=calculator,
    ).run()  # fmt: skip
    assert (tmp_path / "walker_killed").exists() and (tmp_path / "label_killed").exists()
    assert final_training_set(tmp_path / "al") == uninterrupted["train"]
    assert all(g["n_failed"] == 0 for g in state["generations"])
    client.wait_for_workers(n_workers, timeout=60)  # the nannies restarted them


def test_driver_killed_mid_labelling_resumes_without_repeating_labels(uninterrupted, tmp_path):
    """The driver is SIGKILLed while it labels the third frame of generation 1; the rerun
    labels only what was not labelled and ends with the uninterrupted run's training set."""
    base_training_set(tmp_path / "train.xyz")
    calls, marker = tmp_path / "calls", tmp_path / "hanging"
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(HERE)!r})
        from al_helpers import CountingEMT, toy_loop
        reference = CountingEMT({str(calls)!r}, hang_on_call=5, marker={str(marker)!r})
        toy_loop({str(tmp_path / "al")!r}, {str(tmp_path / "train.xyz")!r}, reference).run()
        """
    )  # calls 1-2 check the reference (created, then run on start structure 0), 3-4 label
    # frames 0-1, call 5 hangs in frame 2
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    deadline = time.time() + 300
    while not marker.exists():
        assert proc.poll() is None and time.time() < deadline, "the driver never reached label 3"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    gen1 = tmp_path / "al" / "gen_001"
    done = sorted(p.name for p in (gen1 / "labels").iterdir() if not p.name.startswith("."))
    assert done == ["0000.xyz", "0001.xyz"]
    assert not (gen1 / "labelled.xyz").exists() and not (tmp_path / "al" / "al_state.json").exists()
    stamps = {name: (gen1 / "labels" / name).stat().st_mtime_ns for name in done}

    toy_loop(tmp_path / "al", tmp_path / "train.xyz", CountingEMT(str(calls))).run()
    assert final_training_set(tmp_path / "al") == uninterrupted["train"]
    assert {n: (gen1 / "labels" / n).stat().st_mtime_ns for n in done} == stamps
    # uninterrupted calls + the hanging call + the resumed run's own reference check (2 calls)
    assert len(list(calls.iterdir())) == uninterrupted["calls"] + 3


def test_external_labelling_round_trip(uninterrupted, tmp_path):
    base_training_set(tmp_path / "train.xyz")
    settings = toy_settings(generations=1)
    state = toy_loop(tmp_path / "al", tmp_path / "train.xyz", None, settings=settings).run()
    gen1 = tmp_path / "al" / "gen_001"
    waiting = state["waiting"]
    assert waiting["generation"] == 1 and Path(waiting["to_label"]) == gen1 / "to_label.xyz"
    assert not (gen1 / "train.xyz").exists() and state["generations"] == []
    to_label = ase.io.read(gen1 / "to_label.xyz", ":")
    assert len(to_label) == waiting["frames"] > 1

    # still nothing labelled: it waits again, and the frames to label do not change
    state = toy_loop(tmp_path / "al", tmp_path / "train.xyz", None, settings=settings).run()
    assert "waiting" in state
    assert [frame_key(a) for a in ase.io.read(gen1 / "to_label.xyz", ":")] == [
        frame_key(a) for a in to_label
    ]

    # the user's DFT code labels all but the last frame, as ASE writes calculator results
    labelled = []
    for atoms in to_label[:-1]:
        atoms.calc = EMT()
        atoms.get_forces()
        labelled.append(atoms)
    moved = labelled[0].copy()
    moved.positions[0, 0] += 0.1
    moved.calc = EMT()
    moved.get_forces()
    ase.io.write(gen1 / "labelled.xyz", [*labelled, moved], format="extxyz")
    with pytest.raises(ValueError, match=r"labelled.xyz: structure \d+ is not one of to_label"):
        toy_loop(tmp_path / "al", tmp_path / "train.xyz", None, settings=settings).run()

    ase.io.write(gen1 / "labelled.xyz", labelled, format="extxyz")
    state = toy_loop(tmp_path / "al", tmp_path / "train.xyz", None, settings=settings).run()
    (g,) = state["generations"]
    assert "waiting" not in state
    assert g["n_labelled"] == len(to_label) - 1 and g["failures"] == [
        [len(to_label) - 1, "not in labelled.xyz"]
    ]
    train = ase.io.read(gen1 / "train.xyz", ":")
    assert len(train) == 5 + g["n_added"] and g["n_added"] == len(to_label) - 1
    np.testing.assert_allclose(
        train[5].arrays["REF_forces"], labelled[0].get_forces(apply_constraint=False), atol=1e-6
    )


def test_pyscf_reference_labels_water_as_pyscf_does():
    from ase import units
    from pyscf import dft, gto

    water = molecule("H2O")
    water.rattle(0.02, seed=3)
    reference = load_reference("pyscf", pyscf={"method": "PBE", "basis": "sto-3g"})
    assert reference == PySCFReference(method="PBE", basis="sto-3g")
    atoms, reason = label_frame(water, reference)
    assert reason is None

    mol = gto.M(
        atom=list(zip(water.get_chemical_symbols(), map(tuple, water.positions), strict=True)),
        basis="sto-3g",
        unit="Angstrom",
        verbose=0,
    )
    mf = dft.RKS(mol)
    mf.xc = "PBE"
    mf.conv_tol = 1e-10
    energy = mf.kernel() * units.Hartree
    forces = -mf.nuc_grad_method().kernel() * units.Hartree / units.Bohr
    assert atoms.info["REF_energy"] == pytest.approx(energy, abs=1e-6)
    np.testing.assert_allclose(atoms.arrays["REF_forces"], forces, atol=1e-4)

    radical = molecule("OH")  # 9 electrons: unrestricted
    radical_atoms, reason = label_frame(radical, PySCFReference(method="HF", basis="sto-3g"))
    assert reason is None and np.isfinite(radical_atoms.arrays["REF_forces"]).all()
    box = water.copy()
    box.cell, box.pbc = [6.0, 6.0, 6.0], True
    none, reason = label_frame(box, reference)
    assert none is None and "labels molecules only" in reason


def test_a_user_reference_module_reaches_workers_that_cannot_import_it(
    client, tmp_path, monkeypatch
):
    (tmp_path / "my_dft_setup.py").write_text(
        "from ase.calculators.emt import EMT\n\ndef make():\n    return EMT()\n"
    )
    monkeypatch.chdir(tmp_path)  # the workers started before: tmp_path is not on their path
    factory = load_reference("my_dft_setup:make")
    (result,) = DaskTasks(client).run(
        lambda frame: label_frame(frame, factory)[1], [molecule("CH3CH2OH")], "label"
    )
    assert result == (0, True, None)


def test_cluster_options_that_cannot_work_give_one_line():
    # dask-jobqueue without a jobqueue.yaml (or not installed): one line naming what to do
    with pytest.raises((ValueError, ImportError)) as info, open_client(cluster="slurm"):
        pass
    message = str(info.value)
    assert "\n" not in message and message.startswith("--cluster slurm") and "jobqueue" in message
    with pytest.raises(ValueError, match=r"--cluster 'k8s': one of"), open_client(cluster="k8s"):
        pass
    with pytest.raises(ValueError, match=r"--workers 0: must be >= 1"), open_client(workers=0):
        pass
