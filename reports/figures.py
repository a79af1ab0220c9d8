"""The report's figures, each saved as PNG (for Markdown) and PDF (for LaTeX).

* accuracy vs trainable parameters (log x, 95 % interval bars, the Pareto front; a method with no
  trainable parameters gets its own panel left of a broken axis, since log(0) has no position);
* a critical-difference diagram of average ranks (scikit-posthocs draws it; Demšar 2006), only
  where the report ranks methods (enough tasks);
* a forest plot of per-task differences to the reference with their Welch 95 % intervals;
* performance profiles: the fraction of runs above each accuracy (Agarwal et al. 2021);
* per method: accuracy, training images/s and peak GPU memory side by side.

Every figure gives a method the same colour (``palette``), names methods in a legend or on the
axis rather than in free text (so labels cannot collide), and embeds TrueType fonts in its PDF
(``pdf.fonttype`` 42): ACM and IEEE reject the Type 3 fonts matplotlib embeds by default.
matplotlib runs on the Agg backend: reports are built on machines without a display.
"""

from __future__ import annotations

import functools
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .render import task_label  # noqa: E402

# tab10, then the lighter tab20 shade of each of its hues: 20 distinct colours before any repeats.
COLORS = tuple(plt.get_cmap("tab10").colors) + tuple(plt.get_cmap("tab20").colors[1::2])
MAX_FOREST_ROWS = 20  # rows of one forest-plot page (a VTAB method's 19 tasks); more are split by method
# TrueType, not Type 3; and every text drawn as written: a label such as `$\foo$` is a name,
# not mathtext (which would stop on an unknown symbol). No figure uses mathtext.
FONTS = {"pdf.fonttype": 42, "ps.fonttype": 42, "text.parse_math": False}


def palette(methods: list[str]) -> dict[str, tuple]:
    """One colour per method, by its place in the report's method order (reference first); beyond 20
    methods, colours evenly spaced along the turbo colour map, so no two methods share one."""
    if len(methods) <= len(COLORS):
        return {m: COLORS[i] for i, m in enumerate(methods)}
    cmap = plt.get_cmap("turbo")
    return {m: cmap(i / (len(methods) - 1)) for i, m in enumerate(methods)}


def _truetype(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with plt.rc_context(FONTS):
            return fn(*args, **kwargs)

    return wrapper


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


def _break_marks(left, right) -> None:
    """The // marks of a broken x axis between two panels."""
    kw = {"color": "k", "clip_on": False, "lw": 1}
    d = 0.015
    for ax, x in ((left, 1.0), (right, 0.0)):
        scale = 1.0 / ax.get_position().width
        for y in (0.0, 1.0):
            ax.plot((x - d * scale / 8, x + d * scale / 8), (y - d, y + d), transform=ax.transAxes, **kw)


def _count_label(x: float, _pos=None) -> str:
    if x >= 1e6:
        return f"{x / 1e6:g}M"
    if x >= 1e3:
        return f"{x / 1e3:g}K"
    return f"{x:g}"


def _log_ticks(ax, values: np.ndarray) -> None:
    """Parameter-count labels on a log axis: 1, 2, 5 of each decade where the data span less than two
    decades (else decades only), and no minor-tick labels, which matplotlib prints under a decade
    and which then overlap."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    v = values[np.isfinite(values) & (values > 0)]
    narrow = v.size and np.log10(v.max() / v.min()) < 2
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if narrow else (1.0,)))
    ax.xaxis.set_major_formatter(FuncFormatter(_count_label))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _params_axes(broken: bool):
    """(fig, left, ax): one log-x axis for trainable parameters, and with ``broken`` a narrow panel
    ``left`` of it for methods with zero trainable parameters (else ``left`` is None)."""
    if broken:
        fig, (left, ax) = plt.subplots(
            1, 2, figsize=(6.5, 4), sharey=True, gridspec_kw={"width_ratios": [1, 6], "wspace": 0.06}
        )
        return fig, left, ax
    fig, ax = plt.subplots(figsize=(6.5, 4))
    return fig, None, ax


def _finish_params_axes(fig, left, ax, title: str, order: list[str], grid: str) -> None:
    """Labels, the broken-axis marks and one legend, in ``order``, over both panels."""
    ax.set_xlabel("trainable parameters, head excluded (log scale)")
    if left is not None:
        left.set_xticks([0.0], ["0"])
        left.set_xlim(-1, 1)
        left.spines["right"].set_visible(False)
        ax.spines["left"].set_visible(False)
        ax.tick_params(axis="y", which="both", left=False)
        left.set_ylabel("accuracy (%)")
        left.grid(alpha=0.3)
        _break_marks(left, ax)
    else:
        ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3, which=grid)
    fig.suptitle(title, fontsize=9)
    by_label = {}
    for a in [left, ax] if left is not None else [ax]:
        by_label.update(zip(*reversed(a.get_legend_handles_labels()), strict=True))
    shown = [k for k in dict.fromkeys(order) if k in by_label]
    ax.legend(
        [by_label[k] for k in shown], shown, fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False
    )


@_truetype
def accuracy_vs_params(points: pd.DataFrame, out: Path, title: str, colors: dict | None = None) -> list[Path]:
    """``points``: method, params, estimate, low, high (fractions), one row per method.

    Methods with zero trainable parameters (a linear probe) sit in a narrow panel left of a broken
    x axis, labelled 0; the others on a log axis. The Pareto front joins the points no other point
    beats on both fewer parameters and higher accuracy.
    """
    colors = colors or palette(list(points["method"]))
    params = points["params"].to_numpy(dtype=float)
    y = 100 * points["estimate"].to_numpy(dtype=float)
    lo = 100 * points["low"].to_numpy(dtype=float)
    hi = 100 * points["high"].to_numpy(dtype=float)
    zero = params <= 0
    fig, left, ax = _params_axes(broken=bool(zero.any() and (~zero).any()))
    for i, m in enumerate(points["method"]):
        target = left if (zero[i] and left is not None) else ax
        x = 0.0 if zero[i] else params[i]
        target.errorbar(
            x,
            y[i],
            yerr=[[max(0.0, y[i] - lo[i])], [max(0.0, hi[i] - y[i])]],
            fmt="o",
            capsize=3,
            color=colors[m],
            label=m,
        )
    front = pareto_front(np.where(zero, 0.0, params), y)
    on_log = [i for i in front if not zero[i]]
    if len(on_log) >= 2:  # a front of one point draws no line, so it gets no legend entry either
        ax.plot(params[on_log], y[on_log], "--", color="grey", lw=1, label="Pareto front")
    if (~zero).any():
        ax.set_xscale("log")
        _log_ticks(ax, params[~zero])
    _finish_params_axes(fig, left, ax, title, [*points["method"], "Pareto front"], grid="major")
    return _save(fig, out, "accuracy_vs_params")


@_truetype
def cd_diagram(scores: pd.DataFrame, cd: float, out: Path, title: str, colors: dict | None = None) -> list[Path]:
    """``scores``: blocks × methods (higher is better). Bars join methods whose ranks differ by less than ``cd``.

    The title goes under the diagram (scikit-posthocs draws the CD bar and the rank axis at the
    top, where a title would cover them).
    """
    import scikit_posthocs as sp

    ranks = scores.rank(axis=1, ascending=False).mean(axis=0)
    names = list(scores.columns)
    colors = colors or palette(names)
    if np.ptp(ranks.to_numpy()) < 1e-9:  # scikit-posthocs lays tied labels out 30,000 pt wide
        fig, ax = plt.subplots(figsize=(6.5, 1.2))
        ax.axis("off")
        ax.text(
            0.5, 0.6, f"every method has average rank {ranks.iloc[0]:.2f}: nothing to order", ha="center", fontsize=9
        )
        ax.text(0.5, 0.25, ", ".join(names), ha="center", fontsize=8)
        fig.text(0.5, 0.0, title, ha="center", va="top", fontsize=8)
        return _save(fig, out, "critical_difference")
    # Methods closer than the Nemenyi CD are not distinguishable; scikit-posthocs joins pairs with p >= alpha.
    sig = pd.DataFrame(1.0, index=names, columns=names)
    for a in names:
        for b in names:
            if a != b and abs(ranks[a] - ranks[b]) >= cd:
                sig.loc[a, b] = 0.0
    fig, (ax, bar) = plt.subplots(
        2, 1, figsize=(6.5, 1.9 + 0.3 * len(names)), gridspec_kw={"height_ratios": [4 + 0.3 * len(names), 1]}
    )
    sp.critical_difference_diagram(
        ranks, sig, ax=ax, color_palette={m: colors[m] for m in names}, label_props={"fontsize": 8}
    )
    # The CD bar gets its own strip under the diagram: scikit-posthocs would draw it over the rank ticks.
    lo, hi = ax.get_xlim()
    bar.set_xlim(lo, hi)
    bar.set_ylim(-1, 1)
    start = min(lo, hi) + 0.02 * abs(hi - lo)
    bar.plot([start, start + cd], [0, 0], color="black", lw=2)
    bar.text(start + cd + 0.02 * abs(hi - lo), 0, f"critical difference = {cd:.2f}", va="center", fontsize=8)
    bar.axis("off")
    fig.text(0.5, 0.0, title, ha="center", va="top", fontsize=8)
    return _save(fig, out, "critical_difference")


def forest_pages(methods: list[str], rows_per_method: dict[str, int], limit: int = MAX_FOREST_ROWS) -> list[list[str]]:
    """Methods grouped into pages of at most ``limit`` rows, whole methods per page, in order."""
    pages: list[list[str]] = [[]]
    used = 0
    for m in methods:
        if pages[-1] and used + rows_per_method[m] > limit:
            pages.append([])
            used = 0
        pages[-1].append(m)
        used += rows_per_method[m]
    return [p for p in pages if p]


@_truetype
def forest_plot(cells: pd.DataFrame, reference: str, out: Path, colors: dict | None = None) -> list[Path]:
    """Per task and method, Δ accuracy to the reference (pp) with its Welch 95 % interval, sorted by Δ.

    More than ``MAX_FOREST_ROWS`` rows are split into pages of whole methods (forest_vs_reference,
    forest_vs_reference_2, ...), so every label stays readable."""
    data = cells[(cells["method"] != reference) & cells["diff"].notna()].copy()
    data["label"] = [
        task_label(t, None if pd.isna(k) else int(k)) for t, k in zip(data["task"], data["shots"], strict=True)
    ]
    methods = list(dict.fromkeys(data["method"]))
    colors = colors or palette([reference, *methods])
    counts = data["method"].value_counts().to_dict()
    paths: list[Path] = []
    pages = forest_pages(methods, counts) or [[]]
    for number, page in enumerate(pages, start=1):
        part = data[data["method"].isin(page)]
        stem = "forest_vs_reference" + ("" if number == 1 else f"_{number}")
        suffix = "" if len(pages) == 1 else f" (page {number} of {len(pages)})"
        paths += _forest_page(part, page, reference, colors, out, stem, suffix)
    return paths


def _forest_page(data, methods, reference, colors, out, stem, suffix) -> list[Path]:
    rows = max(1, len(data))
    fig, ax = plt.subplots(figsize=(6.5, 1.0 + 0.28 * rows))
    data = data.sort_values(["method", "diff"])
    y = np.arange(len(data))
    for m in methods:
        sel = (data["method"] == m).to_numpy()
        d = 100 * data["diff"].to_numpy()[sel]
        lo = 100 * data["diff_low"].to_numpy()[sel]
        hi = 100 * data["diff_high"].to_numpy()[sel]
        err = np.vstack([np.nan_to_num(d - lo), np.nan_to_num(hi - d)])
        ax.errorbar(d, y[sel], xerr=err, fmt="o", capsize=2, color=colors[m], label=m)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(y, [f"{lab} · {m}" for lab, m in zip(data["label"], data["method"], strict=True)], fontsize=7)
    ax.set_xlabel(f"Δ accuracy to {reference} (percentage points), Welch 95 % interval{suffix}")
    if methods:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, out, stem)


@_truetype
def performance_profile(cube: np.ndarray, methods: list[str], out: Path, colors: dict | None = None) -> list[Path]:
    """``cube``: (methods × tasks × seeds) accuracies. Fraction of runs above τ; no band (see
    :func:`reports.stats.performance_profile`)."""
    from .stats import performance_profile as profile_of

    colors = colors or palette(methods)
    lo, hi = np.nanmin(cube), np.nanmax(cube)
    pad = max(1e-3, 0.02 * (hi - lo))
    tau = np.linspace(lo - pad, hi + pad, 200)
    prof = profile_of(cube, tau)
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for i, m in enumerate(methods):
        ax.plot(100 * tau, prof[i], color=colors[m], label=m, lw=1.5)
    ax.set_xlabel("accuracy threshold τ (%)")
    ax.set_ylabel("fraction of runs with accuracy > τ")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    n_tasks, n_seeds = cube.shape[1], cube.shape[2]
    ax.set_title(
        f"{n_tasks} task{'s' if n_tasks != 1 else ''} × {n_seeds} seeds; descriptive, no interval band", fontsize=8
    )
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    return _save(fig, out, "performance_profile")


@_truetype
def resources_plot(resources: pd.DataFrame, out: Path, colors: dict | None = None) -> list[Path]:
    """Three aligned bar panels: mean accuracy, training images/s, peak GPU memory (when measured)."""
    methods = resources["method"].tolist()
    colors = colors or palette(methods)
    panels = [
        ("mean accuracy (%)", 100 * resources["mean_acc"].to_numpy(dtype=float)),
        ("training images/s", resources["train_img_s"].to_numpy(dtype=float)),
        ("peak GPU memory (MB)", resources["peak_mem_mb"].to_numpy(dtype=float)),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(10, 0.8 + 0.35 * len(methods)), sharey=True)
    y = np.arange(len(methods))
    for ax, (name, values) in zip(axes, panels, strict=True):
        if np.isfinite(values).any():
            ax.barh(y, np.nan_to_num(values), color=[colors[m] for m in methods])
        else:
            ax.text(0.5, 0.5, "not measured (CPU runs)", ha="center", va="center", transform=ax.transAxes, fontsize=8)
        ax.set_xlabel(name, fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y, methods)
    axes[0].invert_yaxis()
    return _save(fig, out, "resources")


def budget_curve_figure(points: pd.DataFrame, title: str, colors: dict | None = None):
    """``points``: budget, method, params, estimate, low, high, reference_method (see
    ``reports.report.curve_points``). One curve per budget-fitted method through its budgets'
    points, ordered by parameters, with its interval as a band; published sizes (budget
    "published") as open markers of the method's colour, not joined; a reference method (one size)
    as one point with its interval. A method with zero trainable parameters sits in a narrow
    panel left of a broken axis, as in :func:`accuracy_vs_params`. Returns the figure."""
    colors = colors or palette(list(dict.fromkeys(points["method"])))
    first = points.drop_duplicates("method")
    zero = first[first["reference_method"] & (first["params"] <= 0)]
    fig, left, ax = _params_axes(broken=bool(len(zero) and (points["params"] > 0).any()))
    for m in dict.fromkeys(points["method"]):
        sub = points[points["method"] == m]
        colour = colors[m]
        if sub["reference_method"].iloc[0]:
            r = sub.iloc[0]  # one size: the same runs serve every budget
            target = left if (r["params"] <= 0 and left is not None) else ax
            y = 100 * r["estimate"]
            err = [[max(0.0, y - 100 * r["low"])], [max(0.0, 100 * r["high"] - y)]]
            target.errorbar(
                0.0 if r["params"] <= 0 else r["params"], y, yerr=err, fmt="s", capsize=3, color=colour, label=m
            )
            continue
        fitted = sub[sub["budget"] != "published"].sort_values("params")
        if len(fitted):
            x = fitted["params"].to_numpy(dtype=float)
            ax.plot(x, 100 * fitted["estimate"].to_numpy(dtype=float), "o-", color=colour, label=m, lw=1.5)
            ax.fill_between(
                x,
                100 * fitted["low"].to_numpy(dtype=float),
                100 * fitted["high"].to_numpy(dtype=float),
                color=colour,
                alpha=0.18,
                lw=0,
            )
        for _, r in sub[sub["budget"] == "published"].iterrows():
            y = 100 * r["estimate"]
            ax.errorbar(
                r["params"],
                y,
                yerr=[[max(0.0, y - 100 * r["low"])], [max(0.0, 100 * r["high"] - y)]],
                fmt="o",
                mfc="white",
                capsize=3,
                color=colour,
                label=None if len(fitted) else m,
            )
    ax.set_xscale("log")
    _log_ticks(ax, points["params"].to_numpy(dtype=float))
    _finish_params_axes(fig, left, ax, title, list(dict.fromkeys(points["method"])), grid="both")
    return fig


@_truetype
def budget_curves(points: pd.DataFrame, out: Path, interval: str, colors: dict | None = None) -> list[Path]:
    """The budget-curve figure (see :func:`budget_curve_figure`) saved as accuracy_vs_budget.{png,pdf}."""
    title = f"accuracy against trainable parameters, one point per budget\nbands: 95 % interval ({interval})"
    return _save(budget_curve_figure(points, title, colors), out, "accuracy_vs_budget")
