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

With ``--compiled`` (NequIP) it times instead the files NequIP users run MD with: every model
compiled by ``nequip-compile --mode aotinductor --device cpu`` (``--target ase`` for plain
models, ``--target ase_uq`` for heads) into ``OUT/nequip/compiled/`` (reused when there; about a
minute each on CPU), called on the graph their calculator builds; writes
``inference_scaling_compiled.json`` and ``.md``.
"""

from __future__ import annotations

import hashlib
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


PLAIN_METHODS = ("plain", "ensemble")  # methods whose models have no head


def compile_nequip_models(models: dict[str, list[str]], folder: Path) -> tuple[dict, dict]:
    """Compile every model of ``models`` (method -> checkpoints) once with ``nequip-compile --mode
    aotinductor`` into ``folder`` (kept files are reused); returns (method -> compiled files,
    checkpoint -> compile wall time in s, None when reused). RuntimeError with the log's tail if a
    compile fails."""
    compiled, seconds = {}, {}
    for method, paths in models.items():
        target = "ase" if method in PLAIN_METHODS else "ase_uq"
        compiled[method] = []
        for path in paths:
            digest = hashlib.sha1(str(Path(path).resolve()).encode()).hexdigest()[:8]
            output = (
                folder / f"{Path(path).parent.name}_{Path(path).stem}_{digest}_{target}.nequip.pt2"
            )
            if not output.exists():
                log = output.with_suffix(".log")
                LOG.info("nequip-compile %s -> %s", path, output)
                cmd = [Path(sys.executable).parent / "nequip-compile", path, output,
                       "--mode", "aotinductor", "--device", "cpu", "--target", target]  # fmt: skip
                run = common.run_measured(cmd, log, env={"OMP_NUM_THREADS": "1"})
                if run["returncode"] != 0 or not output.exists():
                    raise RuntimeError(f"nequip-compile failed; log {log}:\n{common.tail(log)}")
                seconds[path] = run["wall_s"]
            seconds.setdefault(path, None)
            compiled[method].append(str(output))
    return compiled, seconds


def compiled_nequip_runners(compiled: dict[str, list[str]], frames: dict) -> dict[str, dict]:
    """size -> method -> callable: the AOTInductor files through their calculators' loaders."""
    from nequip.integrations.ase import NequIPCalculator

    from eip_plugins.nequip import NequIPUQCalculator

    calcs = {
        method: [
            NequIPCalculator.from_compiled_model(
                p, device="cpu", chemical_species_to_atom_type_map=True
            )
            if method in PLAIN_METHODS
            else NequIPUQCalculator.from_compiled_model(p, device="cpu")
            for p in paths
        ]
        for method, paths in compiled.items()
    }
    runners = {}
    for size, atoms in frames.items():
        graphs = {m: [c.atoms_to_data(atoms.copy()) for c in cs] for m, cs in calcs.items()}

        def make(cs, gs):
            return lambda: [c.model(dict(g)) for c, g in zip(cs, gs, strict=True)]

        runners[size] = {m: make(cs, graphs[m]) for m, cs in calcs.items()}
    return runners


def measure(
    framework: str, out: Path, rounds: int, methods: list[str], compiled: bool = False
) -> dict:
    result = json.loads((out / framework / "results.json").read_text())
    available = result["methods"]
    models = {m: available[m]["models"] for m in ("plain", *methods, "ensemble") if m in available}
    data = Path(result["data"])
    frames = structures(data)
    extra = {}
    if compiled:
        files, seconds = compile_nequip_models(models, out / framework / "compiled")
        extra = {"compiled": files, "compile_wall_s": seconds}
        runners = compiled_nequip_runners(files, frames)
    else:
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
    return {
        "framework": framework,
        "rounds": rounds,
        "models": models,
        **extra,
        "sizes": table,
    }


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
    p.add_argument(
        "--compiled",
        action="store_true",
        help="NequIP: time the models compiled with nequip-compile --mode aotinductor",
    )
    args = p.parse_args(argv)
    if args.compiled and args.framework != "nequip":
        p.error("--compiled: NequIP models only (nequip-compile --mode aotinductor)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    common.finished_run_results(p, args)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    result = measure(args.framework, args.out, args.rounds, methods, args.compiled)
    name = "inference_scaling_compiled" if args.compiled else "inference_scaling"
    common.write_tool_outputs(args.out / args.framework, name, result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
