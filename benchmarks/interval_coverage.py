"""Coverage of every interval `bench report` prints, measured on simulated results of known truth.

Each setting draws a truth (per-task accuracies of two methods and their seed standard deviations),
then many sets of seed results from it, computes the report's intervals with the functions the
report calls (:mod:`reports.stats`), and counts how often each interval holds its target. The
table in docs/reference/statistics.md is this script's output:

    python benchmarks/interval_coverage.py --reps 10000 --task-reps 2000 > coverage.md

Everything is vectorised over the simulated replicates (numpy), so the whole grid takes a few
minutes on two CPU cores; ``tests/test_interval_coverage.py`` runs a small grid on every CI run.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from reports import stats

INTERVALS = (
    "task mean",
    "task Δ",
    "aggregate mean",
    "group-mean aggregate",
    "aggregate Δ",
    "IQM",
    "P(A>B)",
    "over tasks (--resample-tasks)",
    "over tasks, groups (--resample-tasks)",
    "over tasks Δ (--resample-tasks)",
    "seed bootstrap Δ (not used)",
)
BOOTSTRAP_DRAWS = 1000


@dataclass(frozen=True)
class Setting:
    tasks: int
    seeds: int
    sd_low: float  # seed standard deviation range, in percentage points
    sd_high: float

    @property
    def label(self) -> str:
        sd = f"{self.sd_low:g}" if self.sd_low == self.sd_high else f"{self.sd_low:g}–{self.sd_high:g}"
        return f"{self.tasks} tasks × {self.seeds} seeds, seed SD {sd} pp"


def mixture_iqm(mu: np.ndarray, sd: np.ndarray, points: int = 40_001) -> float:
    """IQM of the equal mixture of normal run distributions N(mu_d, sd_d): the mean of its quantile
    function over [¼, ¾], by inverting the mixture CDF on a fine grid."""
    grid = np.linspace((mu - 8 * sd).min(), (mu + 8 * sd).max(), points)
    cdf = sps.norm.cdf((grid[:, None] - mu) / sd).mean(axis=1)
    u = 0.25 + 0.5 * (np.arange(2000) + 0.5) / 2000
    return float(np.interp(u, cdf, grid).mean())


def _covers(low, high, truth) -> np.ndarray:
    return (low <= truth) & (truth <= high)


def seed_bootstrap_difference(A: np.ndarray, B: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """For comparison: the 95 % percentile interval of the stratified seed bootstrap (each task's
    seeds resampled, tasks fixed, the same indices for both methods) of the mean over tasks of
    A - B, per replicate. ``A``, ``B``: (reps, D, n)."""
    reps, D, n = A.shape
    diff = A - B
    low, high = np.empty(reps), np.empty(reps)
    chunk = max(1, 2_000_000 // (BOOTSTRAP_DRAWS * D * n))
    for start in range(0, reps, chunk):
        d = diff[start : start + chunk]
        idx = rng.integers(0, n, size=(d.shape[0], BOOTSTRAP_DRAWS, D, n))
        draws = np.take_along_axis(d[:, None], idx, axis=3).mean(axis=(2, 3))
        low[start : start + chunk], high[start : start + chunk] = np.percentile(draws, [2.5, 97.5], axis=1)
    return low, high


def simulate(
    setting: Setting, truths: int, reps: int, rng: np.random.Generator, task_reps: int = 100, bootstrap: bool = False
) -> dict[str, float]:
    """Coverage of each interval over ``truths`` random truths × ``reps`` replicates each (the scalar
    per-task intervals over the first ``task_reps`` replicates of each truth)."""
    D, n = setting.tasks, setting.seeds
    hits = {k: 0.0 for k in INTERVALS}
    counts = {k: 0 for k in INTERVALS}
    groups = np.array(["natural", "specialized", "structured"])[np.arange(D) * 3 // D] if D >= 6 else None
    for _ in range(truths):
        mu_b = rng.uniform(0.55, 0.95, D)  # the reference's per-task expected accuracy
        mu_a = mu_b + rng.normal(0.005, 0.01, D)  # the method: +0.5 pp on average, ±1 pp over tasks
        sd_a = rng.uniform(setting.sd_low, setting.sd_high, D) / 100
        sd_b = rng.uniform(setting.sd_low, setting.sd_high, D) / 100
        A = mu_a[:, None] + sd_a[:, None] * rng.standard_normal((reps, D, n))
        B = mu_b[:, None] + sd_b[:, None] * rng.standard_normal((reps, D, n))

        # per task (task 0): mean ± t over seeds, and Welch's interval of A - B
        k = min(reps, task_reps)
        for r in range(k):  # the scalar functions the per-task table calls
            ci = stats.t_interval(A[r, 0])
            hits["task mean"] += _covers(ci.low, ci.high, mu_a[0])
            c = stats.compare_seeds(A[r, 0], B[r, 0])
            hits["task Δ"] += _covers(c.low, c.high, mu_a[0] - mu_b[0])
        counts["task mean"] += k
        counts["task Δ"] += k

        # aggregates over fixed tasks: the report's aggregate_summary (replicates stand in as methods)
        s = stats.aggregate_summary(A, None, 0)
        hits["aggregate mean"] += _covers(s.low, s.high, mu_a.mean()).sum()
        counts["aggregate mean"] += reps
        if groups is not None:
            g = stats.aggregate_summary(A, groups, 0)
            target = np.mean([mu_a[groups == k].mean() for k in np.unique(groups)])
            hits["group-mean aggregate"] += _covers(g.low, g.high, target).sum()
            counts["group-mean aggregate"] += reps
        d = stats.fixed_task_difference(A, B)
        hits["aggregate Δ"] += _covers(d.low, d.high, (mu_a - mu_b).mean()).sum()
        counts["aggregate Δ"] += reps

        if bootstrap:
            low, high = seed_bootstrap_difference(A, B, rng)
            hits["seed bootstrap Δ (not used)"] += _covers(low, high, (mu_a - mu_b).mean()).sum()
            counts["seed bootstrap Δ (not used)"] += reps

        q = stats.iqm_interval(A)
        hits["IQM"] += _covers(q.low, q.high, mixture_iqm(mu_a, sd_a)).sum()
        counts["IQM"] += reps

        p = stats.improvement_interval(A, B)
        theta = sps.norm.cdf((mu_a - mu_b) / np.hypot(sd_a, sd_b)).mean()
        hits["P(A>B)"] += _covers(p.low, p.high, theta).sum()
        counts["P(A>B)"] += reps

        # tasks as a sample: per-task means drawn around a population mean of 0.75, 5 pp task spread
        if D >= 10:
            mu_t = 0.75 + 0.05 * rng.standard_normal((reps, D))
            runs = mu_t[..., None] + sd_a[:, None] * rng.standard_normal((reps, D, n))
            t = stats.random_task_mean(runs.mean(axis=2))
            hits["over tasks (--resample-tasks)"] += _covers(t.low, t.high, 0.75).sum()
            counts["over tasks (--resample-tasks)"] += reps
            if groups is not None:  # every group's population mean is 0.75: so is the mean of group means
                tg = stats.random_task_mean(runs.mean(axis=2), groups)
                hits["over tasks, groups (--resample-tasks)"] += _covers(tg.low, tg.high, 0.75).sum()
                counts["over tasks, groups (--resample-tasks)"] += reps
            # a second method whose task effects differ by N(1, 1) pp: the report's Δ is the same
            # interval on the per-task differences of seed means; its target is the population's 1 pp
            mu_b = mu_t - 0.01 + 0.01 * rng.standard_normal((reps, D))
            runs_b = mu_b[..., None] + sd_b[:, None] * rng.standard_normal((reps, D, n))
            td = stats.random_task_mean(runs.mean(axis=2) - runs_b.mean(axis=2), groups)
            hits["over tasks Δ (--resample-tasks)"] += _covers(td.low, td.high, 0.01).sum()
            counts["over tasks Δ (--resample-tasks)"] += reps
    return {k: hits[k] / counts[k] for k in INTERVALS if counts[k]}


GRID = [
    Setting(D, n, lo, hi)
    for D in (3, 5, 7, 19)
    for n in (2, 3, 5, 10)
    for lo, hi in ((0.2, 0.2), (3.0, 3.0), (0.2, 3.0))
]


def table(results: dict[Setting, dict[str, float]]) -> str:
    names = [k for k in INTERVALS if any(k in r for r in results.values())]
    lines = ["| setting | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for setting, r in results.items():
        cells = [f"{100 * r[k]:.1f}" if k in r else "–" for k in names]
        lines.append(f"| {setting.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=10_000, help="replicates per setting (spread over 20 truths)")
    parser.add_argument(
        "--task-reps", type=int, default=2_000, help="replicates per setting of the per-task (scalar) intervals"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    results = {}
    for s in GRID:
        results[s] = simulate(s, 20, max(1, args.reps // 20), rng, task_reps=args.task_reps // 20, bootstrap=True)
        print(s.label, f"{time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    print(table(results))
    print(
        f"\n{args.reps:,} replicates per setting ({args.task_reps:,} for the per-task intervals), 20 truths, "
        f"{time.perf_counter() - start:.0f} s."
    )


if __name__ == "__main__":
    main()
