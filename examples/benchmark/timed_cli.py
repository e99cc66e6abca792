"""Run ``mace_run_train`` or ``nequip-train`` unchanged, recording the cost of its training loop.

    python -m examples.benchmark.timed_cli mace PATH/TO/mace_run_train --name=... [args]
    python -m examples.benchmark.timed_cli nequip PATH/TO/nequip-train -cp ... [overrides]

The framework's console-script ``main()`` runs in this process with exactly the given arguments
(``sys.argv[0]`` is the script path, as when the script is run directly), so the run is the
framework's own CLI. The only addition: the training loop — ``mace.tools.train`` (all epochs,
validation included) or ``lightning.Trainer.fit`` — is wrapped to record its CPU time
(``time.process_time``, this single-threaded process) and wall time into the JSON file named by
``EIP_BENCH_TIMING_FILE``. CPU time does not grow when other processes share the CPU, which wall
time on a busy machine does by factors of 2-3.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from pathlib import Path


def _timed(fn, record: dict, path: Path):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        c0, w0 = time.process_time(), time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            record["fit_cpu_s"] += time.process_time() - c0
            record["fit_wall_s"] += time.perf_counter() - w0
            record["calls"] += 1
            path.write_text(json.dumps(record) + "\n")

    return wrapper


def main() -> int:
    if len(sys.argv) < 3 or sys.argv[1] not in ("mace", "nequip"):
        raise SystemExit(__doc__)
    framework, script, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    path = Path(os.environ.get("EIP_BENCH_TIMING_FILE", "timing.json"))
    record = {"fit_cpu_s": 0.0, "fit_wall_s": 0.0, "calls": 0}
    sys.argv = [script, *args]
    if framework == "mace":
        from mace import tools
        from mace.cli.run_train import main as cli  # the --head hook registers on this import

        tools.train = _timed(tools.train, record, path)  # run_train calls tools.train(...)
    else:
        import lightning
        from nequip.scripts.train import main as cli

        lightning.Trainer.fit = _timed(lightning.Trainer.fit, record, path)
    result = cli()
    return int(result) if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
