"""One table across backbone variants (issue 13): e2ip trained and attached against each
backbone's own plain model and 4-model ensemble.

Each variant is a benchmark run of its own, e.g.::

    .venv-mace/bin/python -m examples.benchmark --frameworks mace --mace-backbone mace_scalar \\
        --mace-heads e2ip --seeds 1 --out benchmark_out_backbones/mace_scalar

and this collects every ``DIR/<variant>/<framework>/results.json`` under ``DIR``::

    python -m examples.benchmark.backbones benchmark_out_backbones [more runs ...]

writing ``DIR/backbones.md`` (printed as well). With ``--seeds`` > 1 the metrics are the mean ±
standard deviation over the runs and the training ratio is the median over the runs. The
inference column is the part's own timing (9-24-atom structures), or, where
``python -m examples.benchmark.inference_scaling`` has been run on the variant (its
``inference_scaling.json`` beside ``results.json``), that measurement on ethanol (9 atoms) and
on the largest water box.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SPLITS = {"test_300K": "300 K", "test_hot": "1200 K", "test_unseen": "unseen"}


def _get(part: dict, method: str, split: str, key: str):
    return part["metrics"].get(method, {}).get(split, {}).get(key)


def _triple(part: dict, method: str, key: str, digits: int = 2) -> str:
    """The three splits' values, each ``mean ± std`` when the part has several runs."""
    several = len(part.get("seeds") or []) > 1
    cells = []
    for split in SPLITS:
        value = _get(part, method, split, key)
        std = part.get("metrics_std", {}).get(method, {}).get(split, {}).get(key)
        if value is None:
            cells.append("–")
        elif several and std is not None:
            cells.append(f"{value:.{digits}f} ± {std:.{digits}f}")
        else:
            cells.append(f"{value:.{digits}f}")
    return " / ".join(cells)


def _inference(part: dict, method: str) -> str:
    """Inference time / plain: ``inference_scaling`` at the smallest and largest structure
    ("a / b") where it was run, else the part's own model-level ratio."""
    scaling = part.get("inference_scaling")
    if scaling:
        sizes = list(scaling["sizes"].values())
        ratios = [row["ratio_to_plain"].get(method) for row in (sizes[0], sizes[-1])]
        if all(r is not None for r in ratios):
            return " / ".join(f"{r:.2f}" for r in ratios)
    ratio = part["inference"]["model"]["ratio_to_plain"].get(method)
    return "–" if ratio is None else f"{ratio:.2f}"


def _inference_header(parts: list[dict]) -> str:
    for part in parts:
        scaling = part.get("inference_scaling")
        if scaling:
            sizes = list(scaling["sizes"])
            return f"inference / plain ({sizes[0]} / {sizes[-1]})"
    return "inference / plain (model)"


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
        f"| backbone | method | force MAE / plain | ρ atom | CE | {_inference_header(parts)} "
        "| training epoch / plain |",
        "|---|---|---|---|---|---|---|",
    ]
    for part in parts:
        name = variant_name(part)
        training = part.get("training", {})
        for method, label in (
            ("e2ip", "e2ip trained"),
            ("e2ip_attached", "e2ip attached"),
            ("ensemble", "4-model ensemble"),
            ("ensemble_iso", "ensemble (isotropic)"),
        ):
            if method not in part["metrics"]:
                continue
            cost = training.get(method, {})
            epoch = cost.get("epoch_ratio_median", cost.get("epoch_ratio_to_plain"))
            infer = _inference(part, "ensemble" if method == "ensemble_iso" else method)
            rows.append(
                f"| {name} | {label} | {_mae_ratio(part, method)} | "
                f"{_triple(part, method, 'spearman')} | {_triple(part, method, 'ce')} | "
                f"{infer} | {'–' if epoch is None else f'{epoch:.2f}'} |"
            )
    return "\n".join(rows)


def collect(folders: list[Path]) -> list[dict]:
    parts = []
    for folder in folders:
        for path in sorted(folder.glob("**/results.json")):
            data = json.loads(path.read_text())
            if "metrics" in data and "inference" in data:  # a part's results, not the merge
                scaling = path.parent / "inference_scaling.json"
                if scaling.exists():
                    data["inference_scaling"] = json.loads(scaling.read_text())
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
        "CE = calibration error; mean ± std over the runs where there are several.\n\n"
        + summary_table(parts)
        + "\n"
    )
    (args.folders[0] / "backbones.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
