"""eip-al end to end: 4 UDD walkers per generation with MACEUQCalculator on a LocalCluster of 2
Dask workers, GFN2-xTB labels (tblite), retraining through MACE's own mace_run_train, two
generations, resumed with --resume after the first, scored on a held-out set."""

from __future__ import annotations

import json
import shlex

import ase.io
from mace_helpers import BIN, COMMON_ARGS, MACE_RUN_TRAIN, MODEL_ARGS, run_cli

from eip_plugins.active_learning import frame_key

EIP_AL = str(BIN / "eip-al")


def test_two_generations_of_four_walkers_on_dask_with_resume(e2ip_run, data, tmp_path):
    train_cmd = " ".join(
        shlex.quote(a)
        for a in [
            MACE_RUN_TRAIN,
            "--name=model",
            "--train_file={train_file}",
            f"--valid_file={data['tiny_valid']}",
            *MODEL_ARGS,
            *COMMON_ARGS,
            "--head=e2ip",
            "--max_num_epochs=1",
            "--model_dir={gen_dir}",
            "--checkpoints_dir={gen_dir}/checkpoints",
            "--results_dir={gen_dir}/results",
            "--log_dir={gen_dir}/logs",
        ]
    )
    workdir = tmp_path / "al"
    base = [
        EIP_AL, "--framework", "mace", "--model", e2ip_run["model"],
        "--train_file", data["tiny_train"], "--start", data["test_300K"],
        "--walkers", "4", "--workers", "2", "--workdir", workdir,
        "--dynamics", "udd", "--steps", "20", "--record_every", "2",
        "--max_frames", "3", "--min_spacing", "2", "--holdout", data["tiny_valid"],
        "--train_command", train_cmd, "--model_path", "{gen_dir}/model.model",
    ]  # fmt: skip
    run_cli([*base, "--generations", "1"], tmp_path)
    first = json.loads((workdir / "al_state.json").read_text())
    assert len(first["generations"]) == 1
    gen1_train = (workdir / "gen_001" / "train.xyz").read_bytes()

    refused = run_cli([*base, "--generations", "2"], tmp_path, check=False)
    assert refused.returncode == 2 and "add --resume" in refused.stderr.strip().splitlines()[-1]

    proc = run_cli([*base, "--generations", "2", "--resume"], tmp_path)
    state = json.loads((workdir / "al_state.json").read_text())
    assert [g["generation"] for g in state["generations"]] == [1, 2]
    assert state["generations"][0] == first["generations"][0]  # not redone
    assert (workdir / "gen_001" / "train.xyz").read_bytes() == gen1_train
    assert "generation 2: 4 walker(s)" in proc.stdout

    for g in state["generations"]:
        gen_dir = workdir / f"gen_{g['generation']:03d}"
        assert [w["start_index"] for w in g["walkers"]] == [
            (g["generation"] - 1) * 4 + w for w in range(4)
        ]
        for w in range(4):
            assert (gen_dir / f"walker_{w:02d}" / "done.json").exists()
        assert (gen_dir / "model.model").exists()
        assert 0.0 <= g["entropy"] <= 1.0 and g["stable"]
        assert g["holdout"]["force_mae"] > 0 and g["holdout"]["mean_sigma"] > 0

    base_frames = ase.io.read(data["tiny_train"], ":")
    final = ase.io.read(workdir / "gen_002" / "train.xyz", ":")
    keys = [frame_key(a) for a in final]
    assert len(keys) == len(set(keys))
    added = sum(g["n_added"] for g in state["generations"])
    assert added > 0 and len(final) == len(base_frames) + added
    labelled = ase.io.read(workdir / "gen_002" / "labelled.xyz", ":")
    assert all("REF_energy" in a.info and "REF_forces" in a.arrays for a in labelled)
    rows = json.loads((workdir / "al_summary.json").read_text())
    assert [r["generation"] for r in rows] == [0, 1, 2]
    assert all(r["holdout_force_mae"] > 0 for r in rows)
