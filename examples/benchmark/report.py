"""Merge the framework parts' results into ``results.md``, ``results.json`` and plots."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from examples.benchmark import common

METHOD_ORDER = (
    "plain",
    "ensemble",
    "ensemble_iso",
    "e2ip",
    "eip",
    "mve",
    common.ATTACHED,
    "e2ip_as_trained",
    "e2ip_recal_only",
    "e2ip_p1",
    "e2ip_ce",
    "mve_density",
)
METHOD_LABEL = {
    "plain": "plain",
    "ensemble": "ensemble",
    "e2ip": "e2ip",
    "eip": "eip",
    "mve": "mve",
    common.ATTACHED: "e2ip attached",
    "e2ip_as_trained": "e2ip as trained (no density, c = 1)",
    "e2ip_recal_only": "e2ip recalibrated, no density",
    "e2ip_p1": "e2ip, density p = 1",
    "e2ip_ce": "e2ip, c fitted on CE",
    "mve_density": "mve × (1 + r⁴)",
}
# what issue 11 asks of e2ip (trained and attached) against the deep ensemble
TARGET_METHODS = ("e2ip", common.ATTACHED)
HOT_SPLITS = ("test_hot", "test_unseen")
SPLIT_LABEL = {
    "test_300K": "300 K (in distr.)",
    "test_hot": "1200 K (hot)",
    "test_unseen": "unseen molecules",
    "water_300K": "water 300 K",
    "water_hot": "water 600 K",
}
COLUMNS = (
    ("force_mae", "MAE", 3),
    ("force_rmse", "RMSE", 3),
    ("spearman", "ρ atom", 2),
    ("roc_auc", "AUC atom", 2),
    ("spearman_structure", "ρ struct", 2),
    ("roc_auc_structure", "AUC struct", 2),
    ("nll", "NLL", 2),
    ("ce", "CE", 3),
    ("miscalibration_area", "MA", 3),
    ("energy_score", "ES", 3),
    ("rotational_error", "rot. err.", 1),
    ("mean_uncertainty", "mean σ", 3),
)


def _fmt(value, digits: int) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if digits == 1:  # scientific, for errors spanning 1e-16 .. 1
        return f"{value:.1e}"
    if abs(value) >= 1e4:
        return f"{value:.2e}"
    return f"{value:.{digits}f}"


def _label(part: dict, method: str) -> str:
    if method in ("ensemble", "ensemble_iso"):
        label = f"ensemble ×{part.get('settings', {}).get('members', 4)}"
        return label + (" (iso.)" if method == "ensemble_iso" else "")
    return METHOD_LABEL.get(method, method)


def _methods(part: dict) -> list[str]:
    present = list(part.get("metrics", {}))
    return [m for m in METHOD_ORDER if m in present] + [m for m in present if m not in METHOD_ORDER]


def metrics_table(part: dict) -> str:
    head = "| split | method | " + " | ".join(c[1] for c in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 2)]
    splits = [s for s in SPLIT_LABEL if any(s in v for v in part["metrics"].values())]
    for split in splits:
        for method in _methods(part):
            row = part["metrics"][method].get(split)
            if row is None:
                continue
            cells = [_fmt(row.get(key), digits) for key, _, digits in COLUMNS]
            lines.append(
                f"| {SPLIT_LABEL[split]} | {_label(part, method)} | " + " | ".join(cells) + " |"
            )
    return "\n".join(lines)


def cost_table(part: dict) -> str:
    train, inf = part.get("training", {}), part.get("inference", {})
    model, calc = inf.get("model", {}), inf.get("calculator", {})
    head = (
        "| method | train CPU s/epoch | train ratio | train peak RSS (MB) | infer ms/struct (model) "
        "| infer ratio (model) | speed-up vs ens. (model) | infer ratio (ASE calc.) "
        "| speed-up vs ens. (ASE calc.) |"
    )
    lines = [head, "|" + "---|" * 9]
    for method in _methods(part):
        if method not in train:  # ensemble_iso: the ensemble's models and cost
            continue
        t = train.get(method, {})
        per = model.get("per_structure_s", {}).get(method)
        cells = [
            _fmt(t.get("epoch_s"), 2),
            _fmt(t.get("epoch_ratio_to_plain"), 2),
            _fmt(t.get("peak_rss_mb"), 0) if t.get("peak_rss_mb") else "–",
            _fmt(per * 1e3 if per is not None else None, 2),
            _fmt(model.get("ratio_to_plain", {}).get(method), 2),
            _fmt(model.get("speedup_vs_ensemble", {}).get(method), 2),
            _fmt(calc.get("ratio_to_plain", {}).get(method), 2),
            _fmt(calc.get("speedup_vs_ensemble", {}).get(method), 2),
        ]
        lines.append(f"| {_label(part, method)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def growth(part: dict, method: str, split: str) -> float | None:
    """(mean sigma on ``split`` / in distribution) / (mean error on ``split`` / in distribution):
    1 when sigma grows as much as the error out of distribution."""
    rows = part["metrics"].get(method, {})
    base, row = rows.get("test_300K"), rows.get(split)
    if not base or not row or "mean_error" not in row or "mean_uncertainty" not in row:
        return None
    sigma = row["mean_uncertainty"] / base["mean_uncertainty"]
    error = row["mean_error"] / base["mean_error"]
    return sigma / error


def targets_table(part: dict) -> str:
    """Issue 11's targets per split for e2ip (trained, attached) against the 4-model ensemble:
    Spearman >= ensemble (every molecular split), ROC-AUC >= ensemble (unseen), sigma growth
    >= 0.7 x error growth (hot, unseen), CE <= 0.10 in distribution and <= 0.20 outside."""
    metrics = part["metrics"]
    ens = metrics.get("ensemble", {})
    lines = [
        "| split | method | ρ atom (ens.) | AUC atom (ens.) | σ growth / error growth (ens.) "
        "| CE (ens. iso.) |",
        "|---|---|---|---|---|---|",
    ]

    def mark(ok: bool) -> str:
        return "✓" if ok else "✗"

    for split in ("test_300K", *HOT_SPLITS):
        e = ens.get(split)
        if e is None:
            continue
        ce_ens = metrics.get("ensemble_iso", {}).get(split, {}).get("ce")
        for method in TARGET_METHODS:
            row = metrics.get(method, {}).get(split)
            if row is None:
                continue
            rho = f"{row['spearman']:.2f} ({e['spearman']:.2f}) {mark(row['spearman'] >= e['spearman'])}"
            auc = f"{row['roc_auc']:.2f} ({e['roc_auc']:.2f})"
            if split == "test_unseen":
                auc += f" {mark(row['roc_auc'] >= e['roc_auc'])}"
            g, g_ens = growth(part, method, split), growth(part, "ensemble", split)
            grow = "–"
            if g is not None and split in HOT_SPLITS:
                grow = f"{g:.2f} ({g_ens:.2f}) {mark(g >= 0.7)}"
            limit = 0.10 if split == "test_300K" else 0.20
            ce = f"{row['ce']:.3f} ({_fmt(ce_ens, 3)}) {mark(row['ce'] <= limit)}"
            lines.append(
                f"| {SPLIT_LABEL[split]} | {_label(part, method)} | {rho} | {auc} | {grow} | {ce} |"
            )
    return "\n".join(lines)


def calibration_cost_line(part: dict) -> str:
    """The distance term's inference cost and the calibration pass against one epoch."""
    term = part.get("inference", {}).get("distance_term")
    parts = []
    if term is not None:
        rounds = len(term["raw_cpu_s"]["with"])
        parts.append(
            f"e2ip with / without its feature-distance term: {term['ratio']:.3f}× (model level, "
            f"CPU time, {rounds} interleaved A/B rounds)"
        )
    for head in ("e2ip", "eip", "mve"):
        t = part.get("training", {}).get(head, {})
        if t.get("calibration_s") is not None and math.isfinite(t["calibration_s"]):
            stats = t.get("statistics_s")
            detail = (
                f" (statistics pass {stats:.2f} s = {t['statistics_to_epoch']:.2f} epochs)"
                if stats is not None and math.isfinite(stats)
                else ""
            )
            parts.append(
                f"{head} calibration after training {t['calibration_s']:.1f} s = "
                f"{t['calibration_to_epoch']:.2f} epochs{detail}"
            )
    note = (
        " (calibration = statistics pass over the training set + recalibration + the before/after"
        " validation report, whose calibration errors dominate for eip: Monte Carlo credible "
        "levels)"
    )
    if any("calibration after training" in p for p in parts):
        return "; ".join(parts) + note
    return "; ".join(parts)


def plots(out: Path, name: str, part: dict, arrays: dict) -> list[str]:
    """Hexbin sigma vs error per method, reliability diagram per split. Returns file names."""
    from eip_plugins.core.metrics import DEFAULT_LEVELS
    from eip_plugins.plots import plot_reliability, plot_uncertainty_vs_error

    files = []
    for method, splits in arrays.items():
        have = {s: v for s, v in splits.items() if "sigma" in v}
        if not have:
            continue
        labels = {SPLIT_LABEL.get(s, s): v for s, v in have.items()}
        path = out / f"{name}_sigma_vs_error_{method}.png"
        plot_uncertainty_vs_error(
            {k: np.maximum(v["sigma"], 1e-8) for k, v in labels.items()},
            {k: np.maximum(v["error"], 1e-8) for k, v in labels.items()},
            path,
        )
        files.append(path.name)
    grid = DEFAULT_LEVELS
    for split in SPLIT_LABEL:
        curves = {
            _label(part, m): {
                "expected": grid,
                "observed": rows[split]["reliability_observed"],
            }
            for m, rows in part["metrics"].items()
            if split in rows and "reliability_observed" in rows[split]
        }
        if curves:
            path = out / f"{name}_reliability_{split}.png"
            plot_reliability(curves, path)
            files.append(path.name)
    return files


def cost_plot(out: Path, parts: dict) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = {k: v for k, v in parts.items() if "training" in v}
    if not parts:
        return None
    fig, axes = plt.subplots(1, len(parts), figsize=(5.5 * len(parts), 3.6), squeeze=False)
    for ax, (name, part) in zip(axes[0], parts.items(), strict=True):
        methods = [m for m in _methods(part) if m in part["training"]]
        x = np.arange(len(methods))
        train = [part["training"].get(m, {}).get("epoch_ratio_to_plain", np.nan) for m in methods]
        infer = [part["inference"]["model"]["ratio_to_plain"].get(m, np.nan) for m in methods]
        ax.bar(x - 0.2, train, 0.4, label="training time / epoch")
        ax.bar(x + 0.2, infer, 0.4, label="inference time / structure")
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.set_xticks(x, [_label(part, m) for m in methods])
        ax.set_ylabel("cost relative to plain model")
        ax.set_title(name)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "cost_bars.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path.name


def write_report(out: Path, parts: dict, header: dict) -> str:
    """``parts``: framework -> results dict (or ``{"error": ...}``). Returns the markdown."""
    sections = [f"# eip-plugins benchmark\n\n{header.get('summary', '')}".rstrip() + "\n"]
    figures = []
    for name, part in parts.items():
        sections.append(f"## {name}\n")
        if "error" in part:
            sections.append(f"**failed:** {part['error']}\n")
            continue
        sections.append(
            "Uncertainty and accuracy (forces in eV/Å; ρ = Spearman, AUC = ROC-AUC of σ for "
            "the 20 % largest errors; NLL per atom; CE / MA = calibration error / "
            "miscalibration area; ES = energy score; rot. err. = relative Frobenius error of "
            "Σ(R·x) versus RΣ(x)Rᵀ):\n"
        )
        sections.append(metrics_table(part) + "\n")
        sections.append(
            "Cost (measured side by side in this run; training: median epoch time; inference: "
            "median CPU time over interleaved rounds):\n"
        )
        sections.append(cost_table(part) + "\n")
        line = calibration_cost_line(part)
        if line:
            sections.append(line + ".\n")
        sections.append(
            "Issue 11 targets (e2ip trained and attached against the ensemble; in brackets the "
            "ensemble's value, ✓ = target met):\n"
        )
        sections.append(targets_table(part) + "\n")
        attach = part.get("attach")
        if attach:
            sections.append(
                f"e2ip attached: `eip-attach` on the plain model took {attach['wall_s']:.0f} s "
                f"wall (features cached once, {attach['report']['epochs_run']} head epochs, peak "
                f"RSS {attach['peak_rss_mb']:.0f} MB); it trains nothing else.\n"
            )
        arrays_path = out / name / "arrays.npz"
        if arrays_path.exists():
            figures += plots(out, name, part, common.load_arrays(arrays_path))
    bars = cost_plot(out, {k: v for k, v in parts.items() if "error" not in v})
    if bars:
        figures.append(bars)
    if figures:
        sections.append("## Figures\n\n" + "\n".join(f"- `{f}`" for f in figures) + "\n")
    text = "\n".join(sections)
    (out / "results.md").write_text(text)
    common.write_json(out / "results.json", {**header, "frameworks": parts, "figures": figures})
    return text
