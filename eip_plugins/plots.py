"""Matplotlib figures of the package (Agg backend; files only)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_md_logs(logs: dict, path, title: str = "") -> None:
    """Energy and mean sigma versus time for one or more MD runs (eIP paper Fig. 4c style).

    Args:
        logs: label -> MDTrajectory.log (time_fs, energy, uncertainty columns).
    """
    fig, (ax_e, ax_s) = plt.subplots(2, 1, figsize=(6.5, 5), sharex=True)
    for label, log in logs.items():
        t_ps = np.asarray(log["time_fs"]) / 1000.0
        ax_e.plot(t_ps, np.asarray(log["energy"]) - log["energy"][0], label=label, lw=1)
        ax_s.plot(t_ps, log["uncertainty"], label=label, lw=1)
    ax_e.set_ylabel("E - E(0) (eV)")
    ax_s.set_ylabel("mean σ$_i$ (eV/Å)")
    ax_s.set_xlabel("time (ps)")
    ax_e.legend()
    if title:
        ax_e.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_uncertainty_vs_error(sigma: dict, error: dict, path) -> None:
    """Hexbin of per-atom sigma versus per-atom force error, one panel per split (log axes)."""
    n = len(sigma)
    fig, axes = plt.subplots(1, n, figsize=(4 * n, 3.6), squeeze=False)
    for ax, name in zip(axes[0], sigma, strict=True):
        s, e = np.asarray(sigma[name]), np.asarray(error[name])
        ax.hexbin(s, e, gridsize=30, xscale="log", yscale="log", bins="log", mincnt=1)
        lo, hi = min(s.min(), e.min()), max(s.max(), e.max())
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_xlabel("σ$_i$ (eV/Å)")
        ax.set_ylabel("|ΔF$_i$| (eV/Å)")
        ax.set_title(name)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_reliability(curves: dict, path) -> None:
    """Reliability diagram: observed fraction inside the p-credible region versus p."""
    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="ideal")
    for name, curve in curves.items():
        ax.plot(curve["expected"], curve["observed"], label=name)
    ax.set_xlabel("confidence level p")
    ax.set_ylabel("observed fraction")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_al_summary(rows: list[dict], path) -> None:
    """Active learning by generation: held-out force error (when scored) and sigma.

    Args:
        rows: :func:`eip_plugins.active_learning.loop.summary_rows` (generation 0 = the
            starting model on the held-out set).
    """
    if not rows:
        return
    has_holdout = any("holdout_force_mae" in r for r in rows)
    fig, axes = plt.subplots(
        1, 2 if has_holdout else 1, figsize=(9 if has_holdout else 4.5, 3.4), squeeze=False
    )
    ax_s = axes[0, -1]
    md = [r for r in rows if "mean_uncertainty" in r]
    if md:
        ax_s.plot(
            [r["generation"] for r in md],
            [r["mean_uncertainty"] for r in md],
            "o-",
            label="walkers (mean σ$_i$)",
        )
    if has_holdout:
        scored = [r for r in rows if "holdout_force_mae" in r]
        gens = [r["generation"] for r in scored]
        ax_e = axes[0, 0]
        ax_e.plot(gens, [r["holdout_force_mae"] for r in scored], "o-", label="MAE")
        ax_e.plot(gens, [r["holdout_force_rmse"] for r in scored], "s--", label="RMSE")
        ax_e.set_xlabel("generation")
        ax_e.set_ylabel("held-out force error (eV/Å)")
        ax_e.legend()
        ax_s.plot(
            gens,
            [r["holdout_mean_sigma"] for r in scored],
            "s--",
            label="held-out set (mean σ$_i$)",
        )
    ax_s.set_xlabel("generation")
    ax_s.set_ylabel("σ (eV/Å)")
    ax_s.legend()
    for ax in axes[0]:
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
