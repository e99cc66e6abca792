"""eip-al with NequIP: 4 UDD walkers per generation with NequIPUQCalculator on a LocalCluster
of 2 Dask workers, GFN2-xTB labels (tblite), retraining through nequip-train with
config_with_eip, two generations, resumed with --resume after the first."""

from __future__ import annotations

import json
import shlex

import ase.io
from nequip_helpers import BIN, DATA, SMALL_MODEL, run_cli

from eip_plugins.active_learning import frame_key

EIP_AL = str(BIN / "eip-al")


def test_two_generations_of_four_walkers_on_dask_with_resume(runs, tmp_path):
    model = runs.trained("e2ip") / "best.ckpt"
    train_cmd = " ".join(
        shlex.quote(a)
        for a in [
            str(BIN / "nequip-train"),
            "-cn",
            "config_with_eip",
            "++train_file={train_file}",
            f"++val_file={DATA / 'ethanol_valid.xyz'}",
            f"++test_file={DATA / 'ethanol_valid.xyz'}",
            "++model_type_names=[C,H,O]",
            "++max_epochs=1",
            "++head=e2ip",
            "hydra.run.dir={gen_dir}/train",
            *SMALL_MODEL,
        ]
    )
    workdir = tmp_path / "al"
    base = [
        EIP_AL, "--framework", "nequip", "--model", model,
        "--train_file", DATA / "ethanol_valid.xyz", "--start", DATA / "ethanol_test_300K.xyz",
        "--walkers", "4", "--workers", "2", "--workdir", workdir,
        "--dynamics", "udd", "--steps", "20", "--record_every", "2",
        "--max_frames", "3", "--min_spacing", "2",
        "--train_command", train_cmd, "--model_path", "{gen_dir}/train/best.ckpt",
    ]  # fmt: skip
    run_cli([*base, "--generations", "1"], tmp_path)
    first = json.loads((workdir / "al_state.json").read_text())
    proc = run_cli([*base, "--generations", "2", "--resume"], tmp_path)
    state = json.loads((workdir / "al_state.json").read_text())
    assert [g["generation"] for g in state["generations"]] == [1, 2]
    assert state["generations"][0] == first["generations"][0]
    assert "generation 2: 4 walker(s)" in proc.stdout
    assert state["generations"][1]["model"].endswith("gen_002/train/best.ckpt")
    for g in state["generations"]:
        assert g["n_walkers"] == 4 and g["stable"] and g["n_labelled"] > 0

    final = ase.io.read(workdir / "gen_002" / "train.xyz", ":")
    keys = [frame_key(a) for a in final]
    assert len(keys) == len(set(keys))
    base_frames = ase.io.read(DATA / "ethanol_valid.xyz", ":")
    assert len(final) == len(base_frames) + sum(g["n_added"] for g in state["generations"])
