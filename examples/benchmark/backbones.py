"""One table across backbone variants (issue 13): e2ip trained and attached against each
backbone's own plain model and 4-model ensemble.

Each variant is a benchmark run of its own, e.g.::

    .venv-mace/bin/python -m examples.benchmark --frameworks mace --mace-backbone mace_scalar \\
        --mace-heads e2ip --seeds 1 --out benchmark_out_backbones/mace_scalar

and this collects every ``DIR/<variant>/<framework>/results.json`` under ``DIR``::

    python -m examples.benchmark.backbones benchmark_out_backbones [more runs ...]

writing ``DIR/backbones.md`` (printed as well).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SPLITS = {"test_300K": "300 K", "test_hot": "1200 K", "test_unseen": "unseen"}


def _get(part: dict, method: str, split: str, key: str):
    return part["metrics"].get(method, {}).get(split, {}).get(key)


def _triple(part: dict, method: str, key: str, digits: int = 2) -> str:
    values = [_get(part, method, s, key) for s in SPLITS]
    return " / ".join("–" if v is None else f"{v:.{digits}f}" for v in values)


def _mae_ratio(part: dict, method: str) -> str:
    cells = []
    for split in SPLITS:
        a, b = _get(part, method, split, "force_mae"), _get(part, "plain", split, "force_mae")
        cells.append("–" if a is None or not b else f"{a / b:.2f}")
    return " / ".join(cells)


def variant_name(part: dict) -> str:
    settings = part.get("settings", {})
    return settings.get("backbone") or part.get("framework", "?")


def summary_table(parts: list[dict]) -> str:
    """Markdown: one block of rows per backbone variant."""
    rows = [
        "| backbone | method | force MAE / plain | ρ atom | CE | inference / plain "
        "(model) | training epoch / plain |",
        "|---|---|---|---|---|---|---|",
    ]
    for part in parts:
        name = variant_name(part)
        ratio = part["inference"]["model"]["ratio_to_plain"]
        training = part.get("training", {})
        for method, label in (
            ("e2ip", "e2ip trained"),
            ("e2ip_attached", "e2ip attached"),
            ("ensemble", "4-model ensemble"),
            ("ensemble_iso", "ensemble (isotropic)"),
        ):
            if method not in part["metrics"]:
                continue
            epoch = training.get(method, {}).get("epoch_ratio_to_plain")
            infer = ratio.get("ensemble" if method == "ensemble_iso" else method)
            rows.append(
                f"| {name} | {label} | {_mae_ratio(part, method)} | "
                f"{_triple(part, method, 'spearman')} | {_triple(part, method, 'ce')} | "
                f"{'–' if infer is None else f'{infer:.2f}'} | "
                f"{'–' if epoch is None else f'{epoch:.2f}'} |"
            )
    return "\n".join(rows)


def collect(folders: list[Path]) -> list[dict]:
    parts = []
    for folder in folders:
        for path in sorted(folder.glob("**/results.json")):
            data = json.loads(path.read_text())
            if "metrics" in data and "inference" in data:  # a part's results, not the merge
                parts.append(data)
    return parts


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="+", type=Path)
    args = p.parse_args(argv)
    parts = collect(args.folders)
    if not parts:
        p.error(f"no results.json of a benchmark part under {args.folders}")
    text = (
        "Per split 300 K / 1200 K / unseen molecules; ρ = per-atom Spearman of σ vs |error|; "
        "CE = calibration error.\n\n" + summary_table(parts) + "\n"
    )
    (args.folders[0] / "backbones.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
