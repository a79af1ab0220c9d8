"""The report's figures, each saved as PNG (for Markdown) and PDF (for LaTeX).

* accuracy vs trainable parameters (log x, 95 % interval bars, the Pareto front);
* a critical-difference diagram of average ranks (scikit-posthocs draws it; Demšar 2006);
* a forest plot of per-task differences to the reference with their Welch 95 % intervals;
* per method: accuracy, training images/s and peak GPU memory side by side.

matplotlib runs on the Agg backend: reports are built on machines without a display.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .render import task_label  # noqa: E402

COLORS = plt.get_cmap("tab10").colors


def _save(fig, out: Path, stem: str) -> list[Path]:
    paths = [out / f"{stem}.png", out / f"{stem}.pdf"]
    fig.savefig(paths[0], dpi=150, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    plt.close(fig)
    return paths


def pareto_front(params: np.ndarray, acc: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats on both fewer parameters and higher accuracy, by params."""
    order = np.lexsort((-acc, params))
    front, best = [], -np.inf
    for i in order:
        if acc[i] > best:
            front.append(i)
            best = acc[i]
    return np.array(front, dtype=int)


def accuracy_vs_params(points: pd.DataFrame, out: Path, title: str) -> list[Path]:
    """``points``: method, params, estimate, low, high (fractions). Zero-parameter methods sit at the left edge."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    params = points["params"].to_numpy(dtype=float)
    positive = params[params > 0]
    floor = (positive.min() / 10) if len(positive) else 1.0
    x = np.where(params > 0, params, floor)
    y = 100 * points["estimate"].to_numpy(dtype=float)
    lo = 100 * points["low"].to_numpy(dtype=float)
    hi = 100 * points["high"].to_numpy(dtype=float)
    for i, m in enumerate(points["method"]):
        ax.errorbar(x[i], y[i], yerr=[[y[i] - lo[i]], [hi[i] - y[i]]], fmt="o", capsize=3, color=COLORS[i % 10])
        label = m + (" (0 params)" if params[i] == 0 else "")
        ax.annotate(label, (x[i], y[i]), textcoords="offset points", xytext=(5, 5), fontsize=8)
    front = pareto_front(x, y)
    ax.plot(x[front], y[front], "--", color="grey", lw=1, label="Pareto front")
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters, head excluded (log scale)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    return _save(fig, out, "accuracy_vs_params")


def cd_diagram(scores: pd.DataFrame, cd: float, out: Path, title: str) -> list[Path]:
    """``scores``: blocks × methods (higher is better). Bars join methods whose ranks differ by less than ``cd``."""
    import scikit_posthocs as sp

    ranks = scores.rank(axis=1, ascending=False).mean(axis=0)
    names = list(scores.columns)
    # Methods closer than the Nemenyi CD are not distinguishable; scikit-posthocs joins pairs with p >= alpha.
    sig = pd.DataFrame(1.0, index=names, columns=names)
    for a in names:
        for b in names:
            if a != b and abs(ranks[a] - ranks[b]) >= cd:
                sig.loc[a, b] = 0.0
    fig, ax = plt.subplots(figsize=(6, 1.2 + 0.3 * len(names)))
    sp.critical_difference_diagram(ranks, sig, cd=cd, ax=ax)
    ax.set_title(title, fontsize=9)
    return _save(fig, out, "critical_difference")


def forest_plot(cells: pd.DataFrame, reference: str, out: Path) -> list[Path]:
    """Per task and method, Δ accuracy to the reference (pp) with its Welch 95 % interval, sorted by Δ."""
    data = cells[(cells["method"] != reference) & cells["diff"].notna()].copy()
    data["label"] = [
        task_label(t, None if pd.isna(k) else int(k)) for t, k in zip(data["task"], data["shots"], strict=True)
    ]
    methods = list(dict.fromkeys(data["method"]))
    rows = max(1, len(data))
    fig, ax = plt.subplots(figsize=(6, 1.0 + 0.28 * rows))
    data = data.sort_values(["method", "diff"])
    y = np.arange(len(data))
    for i, m in enumerate(methods):
        sel = (data["method"] == m).to_numpy()
        d = 100 * data["diff"].to_numpy()[sel]
        err = np.vstack([d - 100 * data["diff_low"].to_numpy()[sel], 100 * data["diff_high"].to_numpy()[sel] - d])
        ax.errorbar(d, y[sel], xerr=err, fmt="o", capsize=2, color=COLORS[(i + 1) % 10], label=m)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(y, [f"{lab} · {m}" for lab, m in zip(data["label"], data["method"], strict=True)], fontsize=7)
    ax.set_xlabel(f"Δ accuracy to {reference} (percentage points), Welch 95 % interval")
    if methods:
        ax.legend(fontsize=7, loc="best")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, out, "forest_vs_reference")


def resources_plot(resources: pd.DataFrame, out: Path) -> list[Path]:
    """Three aligned bar panels: mean accuracy, training images/s, peak GPU memory (when measured)."""
    methods = resources["method"].tolist()
    panels = [
        ("mean accuracy (%)", 100 * resources["mean_acc"].to_numpy(dtype=float)),
        ("training images/s", resources["train_img_s"].to_numpy(dtype=float)),
        ("peak GPU memory (MB)", resources["peak_mem_mb"].to_numpy(dtype=float)),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(10, 0.8 + 0.35 * len(methods)), sharey=True)
    y = np.arange(len(methods))
    for ax, (name, values) in zip(axes, panels, strict=True):
        if np.isfinite(values).any():
            ax.barh(y, np.nan_to_num(values), color=[COLORS[i % 10] for i in range(len(methods))])
        else:
            ax.text(0.5, 0.5, "not measured (CPU runs)", ha="center", va="center", transform=ax.transAxes, fontsize=8)
        ax.set_xlabel(name, fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y, methods)
    axes[0].invert_yaxis()
    return _save(fig, out, "resources")
