"""Statistics of how far one model's intermediate features lie from another's, and their figure.

Pure functions on numpy arrays (no model, no tracking), used by ``bench analyze shift``:

* :func:`wasserstein1`: the Wasserstein-1 distance between two empirical distributions, one per
  channel, exactly (the integral of the absolute difference of the two quantile functions;
  Villani, *Optimal Transport*, 2009, or ``scipy.stats.wasserstein_distance`` for one channel);
* :func:`linear_cka`: linear centered kernel alignment between two representations of the same
  examples (Kornblith, Norouzi, Lee, Hinton, ICML 2019, eq. 5 in its feature-space form);
* :func:`evenly_spaced`: the deterministic subsets the command draws (images, token positions);
* :func:`moments`: per-channel mean and standard deviation from running sums;
* :func:`shift_figure`: W1 and CKA against depth, one line per model pair.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


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


def shift_figure(rows: list[dict], paths: list[Path], title: str = "") -> list[Path]:
    """W1 (left) and linear CKA (right) against block depth, one line per model pair, saved to each
    of ``paths`` (the format from the suffix: PNG, PDF).

    ``rows``: dicts with ``index`` (the block's depth), ``stage``, ``pair``, ``w1`` and ``cka``.
    Stage boundaries (Swin) are drawn as dotted lines.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    pairs = list(dict.fromkeys(r["pair"] for r in rows))
    colors = plt.get_cmap("tab10").colors
    with plt.rc_context({"pdf.fonttype": 42, "ps.fonttype": 42}):
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharex=True)
        for i, pair in enumerate(pairs):
            mine = sorted((r for r in rows if r["pair"] == pair), key=lambda r: r["index"])
            depth = [r["index"] for r in mine]
            style = {"marker": "o", "markersize": 3, "color": colors[i % len(colors)], "label": pair}
            axes[0].plot(depth, [r["w1"] for r in mine], **style)
            axes[1].plot(depth, [r["cka"] for r in mine], **style)
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
        axes[0].set_ylabel("mean per-channel W1")
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
