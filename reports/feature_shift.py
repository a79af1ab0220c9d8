"""Statistics of how far one model's intermediate features lie from another's, and their figure.

Pure functions on numpy arrays (no model, no tracking), used by ``bench analyze shift``:

* :func:`wasserstein1`: the Wasserstein-1 distance between two empirical distributions, one per
  channel, exactly (the integral of the absolute difference of the two quantile functions;
  Villani, *Optimal Transport*, 2009, or ``scipy.stats.wasserstein_distance`` for one channel);
* :func:`linear_cka`: linear centered kernel alignment between two representations of the same
  examples (Kornblith, Norouzi, Lee, Hinton, ICML 2019, eq. 5 in its feature-space form);
* :func:`evenly_spaced`: the deterministic subsets the command draws (images, token positions);
* :func:`moments`: per-channel mean and standard deviation from running sums;
* :func:`summarize_shift`: many runs' statistics per method and block, with intervals over seeds
  (and tasks) and each method's difference to a reference, as the report computes them for accuracy;
* :func:`shift_figure`: W1 and CKA against depth, one line per model pair or method, with
  interval bands where the rows carry them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import stats

SHIFT_METRICS = ("w1", "cka", "mean_shift", "std_ratio")  # each measured against the frozen backbone
_DOMAIN = {"w1": (0.0, np.inf), "cka": (0.0, 1.0)}
SUMMARY_COLUMNS = [
    "scope", "tasks", "method", "block", "index", "stage", "metric", "estimate", "low", "high", "seeds",
    "interval", "diff", "diff_low", "diff_high", "diff_test",
]  # fmt: skip


def evenly_spaced(n: int, k: int) -> np.ndarray:
    """``k`` of the indices ``0 … n-1``, evenly spaced and including both ends; all of them when
    ``k`` is 0 or at least ``n``. Deterministic, and spread over a list sorted by class or position."""
    if k <= 0 or k >= n:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, k)).astype(np.int64))


def moments(total: np.ndarray, total_sq: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and population standard deviation (ddof 0) from the sums of x and x²."""
    mean = total / count
    var = np.maximum(total_sq / count - mean**2, 0.0)  # rounding can leave a tiny negative
    return mean, np.sqrt(var)


def wasserstein1(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-channel Wasserstein-1 distance between the samples ``a`` [n, C] and ``b`` [m, C].

    W1(P, Q) = ∫₀¹ |F⁻¹(u) − G⁻¹(u)| du for the empirical quantile functions F⁻¹, G⁻¹ (equal
    weights). Both are step functions, constant between the breakpoints i/n and j/m, so the
    integral is an exact finite sum over the merged breakpoints. With n = m it reduces to
    mean |a₍ᵢ₎ − b₍ᵢ₎| over the sorted samples.
    """
    a = np.sort(np.asarray(a, dtype=np.float64), axis=0)
    b = np.sort(np.asarray(b, dtype=np.float64), axis=0)
    n, m = len(a), len(b)
    if n == 0 or m == 0:
        raise ValueError("wasserstein1 needs at least one sample on each side")
    if n == m:
        return np.abs(a - b).mean(axis=0)
    # breakpoints as integers over the common denominator n*m: i*m and j*n
    cuts = np.union1d(np.arange(1, n + 1) * m, np.arange(1, m + 1) * n)
    widths = np.diff(cuts, prepend=0) / (n * m)
    mids = cuts * 2 - np.diff(cuts, prepend=0)  # twice the interval midpoint, in the same units
    ia = mids // (2 * m)  # the sample of a whose quantile step holds the midpoint
    ib = mids // (2 * n)
    return (widths[:, None] * np.abs(a[ia] - b[ib])).sum(axis=0)


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA between ``x`` [n, p] and ``y`` [n, q], rows the same n examples.

    ‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F) on column-centred X and Y (Kornblith et al. 2019, eq. 5):
    1 for representations equal up to rotation and isotropic scaling, 0 for unrelated ones.
    Computed in float64. Undefined (NaN) when either side is constant over the examples.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape[0] != y.shape[0] or x.shape[0] < 2:
        raise ValueError(f"linear_cka needs the same n >= 2 examples on both sides, got {x.shape[0]} and {y.shape[0]}")
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    cross = np.linalg.norm(y.T @ x) ** 2
    norm = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    return float(cross / norm) if norm > 0 else float("nan")


def _task_name(task: str, shots) -> str:
    return task if shots is None or pd.isna(shots) else f"{task} k={int(shots)}"


def summarize_shift(frame: pd.DataFrame, methods: list[str], metrics: tuple[str, ...] = SHIFT_METRICS) -> pd.DataFrame:
    """Per method, block and metric: the estimate, its 95 % interval, and the difference to
    ``methods[0]`` (the reference) with its interval, as :data:`SUMMARY_COLUMNS` rows.

    ``frame`` has one row per run and block: ``method``, ``task``, ``shots`` (NaN outside few-shot),
    ``seed``, ``block``, ``index``, ``stage`` and the ``metrics``, each measured against the frozen
    backbone. The intervals are those the report gives accuracy (:mod:`reports.tables`):

    * per task (scope = the task): the mean over seeds with its Student-t interval; the difference
      by the paired t-test where both methods ran the same seeds, Welch's otherwise;
    * over tasks (scope ``mean of N tasks``, when two or more tasks have every method at every
      seed): the mean of task means with its Welch-Satterthwaite t interval (tasks fixed), and the
      difference with the same kind of interval (:func:`reports.stats.aggregate_summary`).
    """
    frame = frame.copy()
    frame["dataset"] = [_task_name(t, k) for t, k in zip(frame["task"], frame["shots"], strict=True)]
    datasets = sorted(dict.fromkeys(frame["dataset"]))
    blocks = frame.drop_duplicates("block").sort_values("index")[["block", "index", "stage"]].itertuples(index=False)
    blocks = list(blocks)
    reference = methods[0]
    rows: list[dict] = []

    def values(dataset: str, method: str, block: str, metric: str) -> pd.Series:
        sel = (frame["dataset"] == dataset) & (frame["method"] == method) & (frame["block"] == block)
        return frame[sel].set_index("seed")[metric].sort_index()

    for dataset in datasets:
        for b in blocks:
            for metric in metrics:
                ref = values(dataset, reference, b.block, metric)
                for method in methods:
                    x = values(dataset, method, b.block, metric)
                    if x.empty:
                        continue
                    ci = stats.t_interval(x.to_numpy())
                    row = dict(
                        scope=dataset, tasks=1, method=method, block=b.block, index=b.index, stage=b.stage,
                        metric=metric, estimate=ci.mean, low=ci.low, high=ci.high,
                        seeds=",".join(map(str, x.index)), interval="t over seeds",
                        diff=np.nan, diff_low=np.nan, diff_high=np.nan, diff_test="",
                    )  # fmt: skip
                    if method != reference and not ref.empty:
                        paired = list(x.index) == list(ref.index)
                        c = stats.compare_seeds(x.to_numpy(), ref.to_numpy(), paired=paired)
                        row.update(
                            diff=c.diff, diff_low=c.low, diff_high=c.high, diff_test="paired t" if paired else "welch"
                        )
                    rows.append(row)

    seeds = sorted(set(frame["seed"]))
    complete = [
        d for d in datasets if all(set(values(d, m, blocks[0].block, metrics[0]).index) == set(seeds) for m in methods)
    ]
    if len(complete) >= 2:
        scope = f"mean of {len(complete)} tasks"
        for b in blocks:
            for metric in metrics:
                cube = np.array(
                    [[values(d, m, b.block, metric).reindex(seeds).to_numpy() for d in complete] for m in methods]
                )
                s = stats.aggregate_summary(cube, None, 0)
                for i, method in enumerate(methods):
                    rows.append(
                        dict(
                            scope=scope,
                            tasks=len(complete),
                            method=method,
                            block=b.block,
                            index=b.index,
                            stage=b.stage,
                            metric=metric,
                            estimate=s.estimate[i],
                            low=s.low[i],
                            high=s.high[i],
                            seeds=",".join(map(str, seeds)),
                            interval="Welch-Satterthwaite t, tasks fixed",
                            diff=np.nan if i == 0 else s.diff[i],
                            diff_low=np.nan if i == 0 else s.diff_low[i],
                            diff_high=np.nan if i == 0 else s.diff_high[i],
                            diff_test="" if i == 0 else "Welch-Satterthwaite t",
                        )  # fmt: skip
                    )
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def summary_series(summary: pd.DataFrame, scope: str) -> list[dict]:
    """One row per method and block of ``scope`` in :func:`shift_figure`'s form: ``series`` (the
    method), ``index``, ``stage``, and each metric with its ``_low`` and ``_high`` bounds."""
    part = summary[summary["scope"] == scope]
    rows: dict[tuple[str, int], dict] = {}
    for r in part.itertuples(index=False):
        row = rows.setdefault((r.method, r.index), {"series": r.method, "index": r.index, "stage": r.stage})
        row.update({r.metric: r.estimate, f"{r.metric}_low": r.low, f"{r.metric}_high": r.high})
    return list(rows.values())


def shift_figure(rows: list[dict], paths: list[Path], title: str = "", series: str = "pair") -> list[Path]:
    """W1 (left) and linear CKA (right) against block depth, one line per ``series`` value (a model
    pair, or a method of a summary), saved to each of ``paths`` (the format from the suffix: PNG, PDF).

    ``rows``: dicts with ``index`` (the block's depth), ``stage``, the ``series`` key, ``w1`` and
    ``cka``; where they also hold ``w1_low``/``w1_high`` (``cka_low``/``cka_high``), the interval is
    drawn as a band around the line. Stage boundaries (Swin) are drawn as dotted lines.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    names = list(dict.fromkeys(r[series] for r in rows))
    colors = plt.get_cmap("tab10").colors
    banded = False
    with plt.rc_context({"pdf.fonttype": 42, "ps.fonttype": 42, "text.parse_math": False}):  # labels as written
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharex=True)
        for i, name in enumerate(names):
            mine = sorted((r for r in rows if r[series] == name), key=lambda r: r["index"])
            depth = [r["index"] for r in mine]
            color = colors[i % len(colors)]
            for ax, metric in zip(axes, ("w1", "cka"), strict=True):
                ax.plot(depth, [r[metric] for r in mine], marker="o", markersize=3, color=color, label=name)
                low, high = [r.get(f"{metric}_low") for r in mine], [r.get(f"{metric}_high") for r in mine]
                if all(v is not None and np.isfinite(v) for v in low + high):
                    # a t interval can cross what the metric can take (W1 >= 0, CKA <= 1): the band stops there
                    low, high = np.clip(low, *_DOMAIN[metric]), np.clip(high, *_DOMAIN[metric])
                    ax.fill_between(depth, low, high, color=color, alpha=0.2, linewidth=0)
                    banded = True
        first = {}
        for r in rows:
            first.setdefault(r["stage"], r["index"])
        for ax in axes:
            for stage, index in first.items():
                if stage > 0:
                    ax.axvline(index - 0.5, color="0.7", linestyle=":", linewidth=1)
            ax.set_xlabel("block (depth)")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("mean per-channel W1" + (" (95 % interval)" if banded else ""))
        axes[1].set_ylabel("linear CKA (mean-pooled tokens)")
        axes[1].set_ylim(top=max(1.0, axes[1].get_ylim()[1]))  # keep CKA's ceiling of 1 in view
        axes[1].ticklabel_format(axis="y", useOffset=False)  # CKA near 1: print 0.9999, not an offset
        axes[0].legend(fontsize=8, loc="best")
        if title:
            fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        for path in paths:
            fig.savefig(path, dpi=150, bbox_inches="tight")
        plt.close(fig)
    return paths
