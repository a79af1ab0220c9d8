"""Every interval the report prints holds its stated 95 % coverage on simulated results of known truth.

The fast tests run a small grid of benchmarks/interval_coverage.py (the script that produces the
coverage table of docs/reference/statistics.md) and one check through ``reports.tables.aggregates``
itself, at the smallest design the report accepts (3 tasks × 2 seeds), where a percentile seed
bootstrap covered about two thirds of the time. The slow test runs the full grid.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from reports import tables
from reports.runs import select_runs
from tests.test_report import _frame, _grid

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("interval_coverage", ROOT / "benchmarks" / "interval_coverage.py")
coverage = importlib.util.module_from_spec(_spec)
sys.modules["interval_coverage"] = coverage  # dataclasses look their module up by name
_spec.loader.exec_module(coverage)

# Intervals meant to be exact (t based): 95 % ± 2 pp, plus the Monte Carlo error of the simulation
# and the Welch–Satterthwaite conservatism at 2 seeds (about 98 %). The IQM and P(A>B) intervals are
# conservative bounds by construction: at least 93 %.
EXACT = (
    "task mean",
    "task Δ",
    "aggregate mean",
    "group-mean aggregate",
    "aggregate Δ",
    "over tasks (--resample-tasks)",
    "over tasks, groups (--resample-tasks)",
    "over tasks Δ (--resample-tasks)",
)
CONSERVATIVE = ("IQM", "P(A>B)")

FAST_GRID = [
    coverage.Setting(3, 2, 0.2, 3.0),
    coverage.Setting(3, 5, 3.0, 3.0),
    coverage.Setting(19, 2, 0.2, 3.0),
    coverage.Setting(7, 3, 0.2, 0.2),
]


def _check(setting, result: dict[str, float], tolerance: float) -> None:
    for name in EXACT:
        if name in result:
            assert 0.93 - tolerance <= result[name] <= 0.99 + tolerance, (setting.label, name, result[name])
    for name in CONSERVATIVE:
        assert result[name] >= 0.93 - tolerance, (setting.label, name, result[name])


@pytest.mark.parametrize("setting", FAST_GRID, ids=lambda s: s.label)
def test_each_printed_interval_covers_its_target(setting):
    result = coverage.simulate(
        setting, truths=8, reps=150, rng=np.random.default_rng(setting.tasks * 10 + setting.seeds)
    )
    assert set(result) >= {"task mean", "task Δ", "aggregate mean", "aggregate Δ", "IQM", "P(A>B)"}
    if setting.tasks >= 10:  # --resample-tasks, with and without groups, and its difference
        assert {k for k in result if "--resample-tasks" in k} == {k for k in EXACT if "--resample-tasks" in k}
    _check(setting, result, tolerance=0.02)  # 1,200 replicates per aggregate: Monte Carlo SD ≈ 0.6 pp


def test_probability_of_improvement_interval_is_never_a_point():
    rng = np.random.default_rng(5)
    X = rng.normal(0.8, 0.001, size=(500, 3, 2))
    for shift in (0.1, -0.1, 0.0):
        p = coverage.stats.improvement_interval(X + shift, X[::-1])
        assert (p.high - p.low > 0.05).all()


def _replicate_runs(rng: np.random.Generator, mu: np.ndarray, sd: np.ndarray, seeds=(0, 1)):
    acc = {
        (m, t, s): mu[i, j] + sd[i, j] * rng.standard_normal()
        for i, m in enumerate("ar")
        for j, t in enumerate("xyz")
        for s in seeds
    }
    rows = _grid(["r", "a"], ["x", "y", "z"], list(seeds), acc=lambda m, t, s: acc[(m, t, s)])
    return select_runs(_frame(rows), suite="s", stage="final")


def test_the_reports_aggregate_interval_covers_at_three_tasks_and_two_seeds():
    """Through the report's own table code: the headline mean and its Δ to the reference, at 3 tasks
    × 2 seeds with seed SDs of 0.2-3 pp. A percentile seed bootstrap covered about 67 % here."""
    rng = np.random.default_rng(11)
    mu = np.array([[0.81, 0.62, 0.90], [0.80, 0.60, 0.91]])  # rows: a, r
    sd = np.array([[0.02, 0.005, 0.03], [0.01, 0.002, 0.025]])
    reps, mean_hits, diff_hits = 100, 0, 0
    for _ in range(reps):
        agg = tables.aggregates(_replicate_runs(rng, mu, sd), "r")
        row = agg.rows[(agg.rows["row"] == agg.headline) & (agg.rows["method"] == "a")].iloc[0]
        mean_hits += row["low"] <= mu[0].mean() <= row["high"]
        diff_hits += row["diff_low"] <= (mu[0] - mu[1]).mean() <= row["diff_high"]
    # 100 replicates: a 95 % interval covers at least 86 % with probability > 0.999
    assert mean_hits / reps >= 0.86 and diff_hits / reps >= 0.86, (mean_hits, diff_hits)


@pytest.mark.slow
def test_the_published_coverage_grid():
    rng = np.random.default_rng(0)
    for setting in coverage.GRID:
        _check(setting, coverage.simulate(setting, truths=10, reps=300, rng=rng), tolerance=0.01)
