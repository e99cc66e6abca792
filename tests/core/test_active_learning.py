"""Active-learning loop mechanics with a toy uncertainty calculator (no framework needed).

The end-to-end run through a framework's own training CLI is in the framework suites.
"""

import json
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest
from al_helpers import ToyUQCalculator, base_training_set
from ase.build import molecule
from ase.calculators.emt import EMT

from eip_plugins.active_learning import (
    ActiveLearningLoop,
    ALSettings,
    frame_key,
    label_frames,
    select_uncertain_frames,
)
from eip_plugins.core import UDDConfig
from eip_plugins.dynamics import MDSettings


def test_calculator_results_and_bad_input():
    atoms = molecule("CH3CH2OH")
    atoms.calc = ToyUQCalculator()
    assert atoms.calc.get_property("forces_epistemic_cov", atoms).shape == (9, 3, 3)
    assert np.isfinite(atoms.calc.get_property("uncertainty", atoms))
    bad = atoms.copy()
    bad.positions[2, 1] = np.nan
    bad.calc = ToyUQCalculator()
    with pytest.raises(ValueError, match="non-finite.*atom\\(s\\) \\[2\\]"):
        bad.get_forces()
    clash = atoms.copy()
    clash.positions[1] = clash.positions[0] + 0.01
    clash.calc = ToyUQCalculator()
    with pytest.raises(ValueError, match="atoms 0 and 1 overlap"):
        clash.get_forces()
    alien = molecule("CH3CH2OH")
    alien.numbers[0] = 14
    alien.calc = ToyUQCalculator()
    with pytest.raises(ValueError, match="\\['Si'\\] are not known"):
        alien.get_forces()


def test_udd_with_zero_depth_gives_unbiased_forces_and_bias_is_bounded():
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=1)
    plain = ToyUQCalculator()
    off = ToyUQCalculator(udd=UDDConfig(A=0.0))
    on = ToyUQCalculator(udd=UDDConfig(A=5.0, B=0.05, C=2.0, D=0.1))
    f_plain = plain.get_forces(atoms)
    np.testing.assert_array_equal(off.get_forces(atoms), f_plain)
    f_on = on.get_forces(atoms)
    np.testing.assert_allclose(on.results["forces_unbiased"], f_plain, rtol=1e-12)
    bias = on.results["udd_bias_forces"]
    np.testing.assert_allclose(f_on, f_plain + bias, rtol=1e-12)
    assert np.abs(bias).max() <= on.udd.max_bias_force + 1e-12
    assert np.abs(bias).max() > 0


def test_selection_threshold_spacing_and_cap():
    u = np.array([0.1, 0.9, 0.8, 0.2, 0.7, 0.95, 0.1])
    assert select_uncertain_frames(u, 0.5, min_spacing=1) == [1, 2, 4, 5]
    # greedy by uncertainty: 5 (0.95), 1 (0.9); 2 and 4 are too close to an accepted frame
    assert select_uncertain_frames(u, 0.5, min_spacing=2) == [1, 5]
    assert len(select_uncertain_frames(u, -1.0, min_spacing=1, max_frames=3)) == 3
    assert select_uncertain_frames(u, 2.0) == []
    # upper trust level: 0.95 and 0.9 are beyond it and block no neighbour
    assert select_uncertain_frames(u, 0.5, min_spacing=2, threshold_max=0.85) == [2, 4]
    assert select_uncertain_frames(u, 0.5, min_spacing=1, threshold_max=0.05) == []


def test_threshold_max_is_checked():
    from eip_plugins.active_learning.loop import ALSettings

    assert ALSettings(threshold=0.1, threshold_max=2.0).threshold_max == 2.0
    with pytest.raises(ValueError, match="invalid threshold_max=0.1: must exceed threshold=0.5"):
        ALSettings(threshold=0.5, threshold_max=0.1)
    with pytest.raises(ValueError, match="invalid threshold_max=inf: a finite number"):
        ALSettings(threshold_max=float("inf"))


def test_labelling_skips_failures():
    frames = [molecule("CH3CH2OH") for _ in range(4)]
    for i, f in enumerate(frames):
        f.rattle(0.01, seed=i)
    calls = {"n": 0}

    def flaky():
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("SCF not converged")
        return EMT()

    labelled, failures = label_frames(frames, flaky)
    assert len(labelled) == 3 and failures[0][0] == 1 and "SCF" in failures[0][1]
    assert "REF_energy" in labelled[0].info and labelled[0].arrays["REF_forces"].shape == (9, 3)


def test_labels_are_the_reference_forces_whatever_the_constraints():
    """Frames from constrained MD: labels are the raw reference forces, not constrained ones."""
    from ase.constraints import FixAtoms, FixCom

    frame = molecule("CH3CH2OH")
    frame.rattle(0.05, seed=1)
    frame.set_constraint([FixAtoms(indices=[0]), FixCom()])
    (labelled,), _ = label_frames([frame], EMT)
    raw = frame.copy()
    raw.set_constraint()
    raw.calc = EMT()
    np.testing.assert_array_equal(labelled.arrays["REF_forces"], raw.get_forces())
    assert np.abs(labelled.arrays["REF_forces"][0]).max() > 0  # FixAtoms would zero this row


def test_md_frames_do_not_carry_the_thermostat_constraint():
    """run_md holds the centre of mass with FixCom; the recorded frames keep only the user's
    constraints (FixCom would silently edit forces computed on them later)."""
    from ase.constraints import FixAtoms, FixCom

    from eip_plugins.dynamics import run_md

    start = molecule("CH3CH2OH")
    start.set_constraint(FixAtoms(indices=[8]))
    traj = run_md(start, ToyUQCalculator(), MDSettings(steps=4, record_every=2), progress=False)
    assert len(traj.frames) == 3
    for f in traj.frames:
        assert [type(c) for c in f.constraints] == [FixAtoms]
        assert not any(isinstance(c, FixCom) for c in f.constraints)
    com = [f.get_center_of_mass() for f in traj.frames]
    np.testing.assert_allclose(com[-1], com[0], atol=1e-8)


class Interrupt(Exception):
    pass


def test_loop_two_generations_resume_without_duplicates(tmp_path):
    train = tmp_path / "train.xyz"
    base_training_set(train)
    original = train.read_bytes()
    calls = []

    def retrain(train_file, gen_dir, generation, model):
        calls.append(generation)
        if generation == 2 and calls.count(2) == 1:
            raise Interrupt("killed")
        out = gen_dir / "model.txt"
        out.write_text(f"trained on {train_file}")
        return str(out)

    settings = ALSettings(
        generations=2,
        dynamics="udd",
        md=MDSettings(steps=40, record_every=2, timestep_fs=0.5),
        udd=UDDConfig(A=1.0, B=0.05),
        max_frames=4,
        min_spacing=2,
    )

    def make_loop():
        return ActiveLearningLoop(
            tmp_path / "al",
            "model0",
            train,
            [molecule("CH3CH2OH")],
            lambda model, udd: ToyUQCalculator(udd=udd),
            retrain,
            EMT,
            settings,
        )

    with pytest.raises(Interrupt):
        make_loop().run()
    state = json.loads((tmp_path / "al" / "al_state.json").read_text())
    assert len(state["generations"]) == 1
    gen1_train = (tmp_path / "al" / "gen_001" / "train.xyz").read_bytes()

    state = make_loop().run()
    assert calls == [1, 2, 2]  # generation 1 was not redone
    assert [g["generation"] for g in state["generations"]] == [1, 2]
    assert (tmp_path / "al" / "gen_001" / "train.xyz").read_bytes() == gen1_train
    assert train.read_bytes() == original  # the user's file is untouched
    final = ase.io.read(tmp_path / "al" / "gen_002" / "train.xyz", ":")
    keys = [frame_key(a) for a in final]
    assert len(keys) == len(set(keys))
    n_added = sum(g["n_added"] for g in state["generations"])
    assert len(final) == 5 + n_added and n_added > 0
    gen2 = tmp_path / "al" / "gen_002"
    for name in (
        "walker_00/trajectory.xyz",
        "walker_00/md_log.txt",
        "walker_00/done.json",
        "md.png",
        "selected.xyz",
        "labelled.xyz",
        "labels/0000.xyz",
    ):
        assert (gen2 / name).exists(), name
    assert (tmp_path / "al" / "al_summary.json").exists()
    assert (tmp_path / "al" / "al_summary.png").exists()
    assert 0.0 <= state["generations"][1]["entropy"] <= 1.0


def test_md_records_the_feature_distance_and_frames_can_be_selected_on_it(tmp_path):
    from core_helpers import fit_random_statistics

    from eip_plugins.dynamics import run_md

    calc = ToyUQCalculator()
    fit_random_statistics(calc.head)
    traj = run_md(molecule("CH3CH2OH"), calc, MDSettings(steps=20, record_every=5))
    log = traj.log
    assert np.all(log["feature_distance"] > 0)
    assert np.all(log["feature_distance_max"] >= log["feature_distance"])
    assert traj.frames[-1].info["feature_distance"] == log["feature_distance"][-1]
    with pytest.raises(ValueError, match="select_on"):
        ALSettings(select_on="energy")
    settings = ALSettings(select_on="feature_distance", statistic="max", max_frames=1)
    column = f"{settings.select_on}_max"
    chosen = select_uncertain_frames(log[column], -np.inf, 1, settings.max_frames)
    assert chosen == [int(np.argmax(log["feature_distance_max"]))]


def test_a_reference_that_cannot_be_created_stops_the_loop_before_any_md(tmp_path):
    train = tmp_path / "train.xyz"
    base_training_set(train)
    calculators = []

    def missing_tblite():
        raise ImportError("the default reference, GFN2-xTB, needs tblite")

    loop = ActiveLearningLoop(
        tmp_path / "al",
        "model0",
        train,
        [molecule("CH3CH2OH")],
        lambda model, udd: calculators.append(model) or ToyUQCalculator(udd=udd),
        lambda *a: pytest.fail("retrained without a reference"),
        missing_tblite,
        ALSettings(generations=1, md=MDSettings(steps=4, record_every=2)),
    )
    with pytest.raises(RuntimeError, match="reference calculator cannot be created.*tblite"):
        loop.run()
    assert calculators == []  # no MD ran
    assert not (tmp_path / "al" / "gen_001").exists()


def _eip_al_cli(tmp_path, *extra, hide_tblite=False):
    """Run ``eip-al`` in a subprocess (optionally with tblite made unimportable)."""
    import os
    import subprocess
    import sys

    train = tmp_path / "train.xyz"
    base_training_set(train)
    (tmp_path / "unread.model").write_text("the reference is checked before the model is read")
    argv = [
        "--framework", "mace", "--model", "unread.model", "--train_file", str(train),
        "--start", f"{train}@0", "--workdir", str(tmp_path / "al"),
        "--train_command", "true", "--model_path", "x", *extra,
    ]  # fmt: skip
    code = (
        "import sys; sys.modules['tblite'] = None; " if hide_tblite else "import sys; "
    ) + "from eip_plugins.active_learning.cli import main; sys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}  # torch/e3nn warnings are not ours
    return subprocess.run(
        [sys.executable, "-c", code, *argv], cwd=tmp_path, env=env, capture_output=True, text=True
    )


def test_eip_al_without_tblite_stops_with_one_line_naming_the_extra(tmp_path):
    proc = _eip_al_cli(tmp_path, hide_tblite=True)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, proc.stderr
    assert errors[0].startswith("eip-al: error: the reference calculator cannot be created")
    assert 'pip install "eip-plugins[label]"' in errors[0] and "--reference" in errors[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "al" / "gen_001").exists()


def test_eip_al_reference_option_loads_a_user_factory_and_refuses_bad_ones(tmp_path):
    (tmp_path / "my_refs.py").write_text(
        "def broken():\n    raise OSError('ORCA binary not found')\n"
    )
    proc = _eip_al_cli(tmp_path, "--reference", "my_refs:broken")
    assert proc.returncode == 2 and "ORCA binary not found" in proc.stderr, proc.stderr
    for spec, message in (
        ("nowhere_module:f", "cannot import 'nowhere_module'"),
        ("my_refs:absent", "my_refs has no function 'absent'"),
        ("orca", "expected 'tblite', 'pyscf', 'external' or MODULE:FUNCTION"),
    ):
        proc = _eip_al_cli(tmp_path, "--reference", spec)
        assert proc.returncode == 2, spec
        (line,) = proc.stderr.strip().splitlines()
        assert line.startswith(f"eip-al: error: --reference {spec!r}: ") and message in line


def test_load_reference_returns_the_user_factory(tmp_path, monkeypatch):
    from eip_plugins.active_learning.labelling import load_reference, tblite_reference

    (tmp_path / "my_emt.py").write_text(
        "from ase.calculators.emt import EMT\n\ndef make():\n    return EMT()\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_reference("gfn2-xtb") == tblite_reference == load_reference("tblite")
    factory = load_reference("my_emt:make")
    assert type(factory()).__name__ == "EMT"


def test_training_command_keeps_braces_that_are_not_placeholders(tmp_path):
    from eip_plugins.active_learning import CommandRetrainer

    script = tmp_path / "train.py"
    script.write_text("import sys, pathlib\npathlib.Path(sys.argv[2]).write_text(sys.argv[1])\n")
    retrain = CommandRetrainer(
        f"{sys.executable} {script} '--E0s={{1: -13.6, 8: -2041.8}} {{train_file}}' "
        "{gen_dir}/model.model",
        "{gen_dir}/model.model",
    )
    model = retrain(tmp_path / "train.xyz", tmp_path, 1, "m0")
    assert Path(model).read_text() == f"--E0s={{1: -13.6, 8: -2041.8}} {tmp_path / 'train.xyz'}"


def test_a_saved_walker_is_reused_only_for_the_same_model_and_settings(tmp_path):
    from dataclasses import replace

    from eip_plugins.active_learning.walkers import (
        WalkerTask,
        load_walker,
        plan_walkers,
        run_walker,
        save_walker,
        walker_signature,
    )

    (walker,) = plan_walkers(generation=2, walkers=1, n_starts=3, seed=10)
    assert (walker.start_index, walker.seed) == (1, 12)
    task = WalkerTask(walker, "m.model", molecule("CH3CH2OH"), MDSettings(steps=6, record_every=2),
                      UDDConfig(A=1.0), lambda model, udd: ToyUQCalculator(udd=udd))  # fmt: skip
    traj = run_walker(task)
    save_walker(tmp_path / walker.name, walker, traj, walker_signature(task))
    again = load_walker(tmp_path / walker.name, walker, walker_signature(task))
    assert len(again.frames) == len(traj.frames) == 4
    np.testing.assert_array_equal(again.log["uncertainty"], traj.log["uncertainty"])
    for changed in (
        replace(task, model="other.model"),
        replace(task, md=replace(task.md, steps=8)),
        replace(task, udd=None),
    ):
        assert load_walker(tmp_path / walker.name, walker, walker_signature(changed)) is None
