"""Retrain through the framework's own command line (mace_run_train, nequip-train)."""

from __future__ import annotations

import logging
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass
class CommandRetrainer:
    """Run a training command template and return the trained model's path.

    Placeholders in ``command`` and ``model_path``: ``{train_file}`` (the generation's training
    set), ``{gen_dir}`` (the generation's folder), ``{generation}`` (its number) and ``{model}``
    (the previous model). Example for MACE::

        mace_run_train --name=model --train_file={train_file} --valid_fraction=0.1
            --model_dir={gen_dir} --checkpoints_dir={gen_dir}/checkpoints
            --results_dir={gen_dir}/results --log_dir={gen_dir}/logs --head=e2ip ...

    with ``model_path="{gen_dir}/model.model"``.
    """

    command: str
    model_path: str

    def __call__(self, train_file: Path, gen_dir: Path, generation: int, model: str) -> str:
        fields = dict(train_file=train_file, gen_dir=gen_dir, generation=generation, model=model)
        argv = shlex.split(fill_placeholders(self.command, fields))
        log_path = Path(gen_dir) / "train.log"
        log.info("retraining: %s (log: %s)", " ".join(argv), log_path)
        with open(log_path, "w") as handle:
            proc = subprocess.run(argv, stdout=handle, stderr=subprocess.STDOUT, check=False)
        if proc.returncode != 0:
            tail = log_path.read_text().strip().splitlines()[-5:]
            raise RuntimeError(
                f"retraining failed with exit code {proc.returncode}; see {log_path}:\n"
                + "\n".join(tail)
            )
        path = Path(fill_placeholders(self.model_path, fields))
        if not path.exists():
            raise FileNotFoundError(f"retraining finished but wrote no model at {path}")
        return str(path)


def fill_placeholders(template: str, fields: dict) -> str:
    """Replace ``{name}`` for each name of ``fields``; every other brace is left as it is (a
    MACE ``--E0s={1: -13.6, 8: -2041.8}`` in a training command must survive)."""
    for name, value in fields.items():
        template = template.replace("{" + name + "}", str(value))
    return template
