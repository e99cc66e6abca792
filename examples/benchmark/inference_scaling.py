"""Inference cost against system size: the benchmark's trained models on larger structures.

The main benchmark times 9-atom molecules and the 24-atom water box, where a model's cost is
mostly per-call overhead; MD runs on hundreds of atoms. This times, for one framework, the plain
model, each head and the 4-model ensemble of a finished benchmark run (``OUT/<framework>/
results.json``) on an ethanol molecule and on the water box repeated 1×1×1, 2×2×2 and 3×3×3
(24, 192 and 648 atoms): forward plus force backward of the torch model(s) on a graph built once
(model level, CPU time of this single-threaded process, interleaved rounds, medians), as the
benchmark's model-level timing does.

    .venv-mace/bin/python -m examples.benchmark.inference_scaling --framework mace --out benchmark_out
    .venv-nequip/bin/python -m examples.benchmark.inference_scaling --framework nequip --out benchmark_out

Writes ``OUT/<framework>/inference_scaling.json`` and ``.md``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

from examples.benchmark import common
from examples.benchmark.data import read_split

LOG = logging.getLogger("benchmark.inference_scaling")
REPLICAS = (1, 2, 3)


def structures(data: Path) -> dict[str, object]:
    """name -> ASE Atoms: one ethanol (test_300K) and the water box repeated n×n×n."""
    out = {}
    ethanol = [a for a in read_split(data, "test_300K") if a.get_chemical_formula() == "C2H6O"]
    if ethanol:
        out["ethanol (9 atoms)"] = ethanol[0]
    water = read_split(data, "water_300K")
    for n in REPLICAS if water else ():
        box = water[0].repeat((n, n, n))
        out[f"water {n}×{n}×{n} ({len(box)} atoms)"] = box
    return out


def mace_runners(models: dict[str, list[str]], frames: dict) -> dict[str, dict]:
    """size -> method -> callable: MACE models in float64, as the benchmark's timing."""
    import torch

    from examples.benchmark.mace_part import _mace_batches, inference_models

    torch.set_default_dtype(torch.float64)
    loaded = inference_models(models)
    first = loaded[models["plain"][0]]
    runners = {}
    for size, atoms in frames.items():
        (batch,) = _mace_batches([atoms], first)

        def make(paths, batch=batch):
            nets = [loaded[p] for p in paths]
            return lambda: [
                n(dict(batch), training=False, compute_force=True, compute_stress=False)
                for n in nets
            ]

        runners[size] = {method: make(paths) for method, paths in models.items()}
    return runners


def nequip_runners(models: dict[str, list[str]], frames: dict) -> dict[str, dict]:
    """size -> method -> callable: NequIP models in their training precision."""
    from examples.benchmark.nequip_part import _calc_head, _calc_plain

    calcs = {
        method: [(_calc_plain if method in ("plain", "ensemble") else _calc_head)(p) for p in paths]
        for method, paths in models.items()
    }
    runners = {}
    for size, atoms in frames.items():
        graph = calcs["plain"][0].atoms_to_data(atoms.copy())

        def make(cs, graph=graph):
            nets = [c.model for c in cs]
            return lambda: [n(dict(graph)) for n in nets]

        runners[size] = {method: make(cs) for method, cs in calcs.items()}
    return runners


def measure(framework: str, out: Path, rounds: int, methods: list[str]) -> dict:
    result = json.loads((out / framework / "results.json").read_text())
    available = result["methods"]
    models = {m: available[m]["models"] for m in ("plain", *methods, "ensemble") if m in available}
    data = Path(result["data"])
    frames = structures(data)
    runners = (mace_runners if framework == "mace" else nequip_runners)(models, frames)
    table = {}
    for size, funcs in runners.items():
        LOG.info("%s: %d rounds of %s", size, rounds, ", ".join(funcs))
        raw = common.interleaved_timings(funcs, rounds=rounds)["cpu"]
        per = {m: common.median(times) for m, times in raw.items()}
        table[size] = {
            "ms": {m: 1e3 * t for m, t in per.items()},
            "ratio_to_plain": {m: t / per["plain"] for m, t in per.items()},
            "raw_cpu_s": raw,
        }
    return {"framework": framework, "rounds": rounds, "models": models, "sizes": table}


def markdown(result: dict) -> str:
    sizes = result["sizes"]
    methods = list(next(iter(sizes.values()))["ms"])
    head = "| structure | plain ms | " + " | ".join(f"{m} / plain" for m in methods[1:]) + " |"
    lines = [head, "|" + "---|" * (len(methods) + 1)]
    for size, row in sizes.items():
        ratios = " | ".join(f"{row['ratio_to_plain'][m]:.2f}" for m in methods[1:])
        lines.append(f"| {size} | {row['ms']['plain']:.1f} | {ratios} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = common.finished_run_parser(
        "python -m examples.benchmark.inference_scaling", __doc__.split("\n")[0]
    )
    p.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds")
    p.add_argument("--methods", default="e2ip,eip,mve", help="heads to time besides plain")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    common.finished_run_results(p, args)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    result = measure(args.framework, args.out, args.rounds, methods)
    common.write_tool_outputs(
        args.out / args.framework, "inference_scaling", result, markdown(result)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
