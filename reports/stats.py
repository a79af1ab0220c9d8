"""Statistics for the report generator: small pure functions over numpy arrays.

Accuracies are fractions internally; rendering in percent is the caller's job. Every function
returns plain floats, numpy arrays or frozen dataclasses, gives NaN where a quantity is undefined,
and does not raise on legal but degenerate data (one seed, identical methods, all-tied ranks).
Only numpy and scipy are used here; the tests cross-check against statsmodels, scikit-posthocs,
autorank and rliable's metrics, and a simulation with known truth measures every interval's
coverage.

What each piece is for, and why
-------------------------------

Per task, over seeds (n is typically 5):

* ``t_interval``: mean ± the half-width of the 95 % Student-t confidence interval. Every "±" in
  the report is this half-width. There is no bootstrap at n <= 10: with 5 seeds a resample has only
  126 distinct values, the interval cannot extend past the sample range, and a percentile bootstrap
  covers about 84 % instead of 95 %, while the t-interval is close to nominal even for mildly
  non-normal data.
* ``compare_seeds``: a method against the reference on one task. Welch's t-test (unequal
  variances) by default; the paired t-test only where seeds are declared common random numbers
  up front (choosing the test after seeing the data is p-hacking). The difference comes with its
  t confidence interval, and with P(A>B), the probability that a run of A beats a run of B
  (``prob_superiority``), which Bouthillier et al. 2021 (MLSys, "Accounting for variance in
  machine learning benchmarks") recommend as the effect size to judge improvements by. Rank
  tests (Mann-Whitney, Wilcoxon) are not used as per-task tests: at n=5 their p-values have floors
  (0.0079 and 0.0625) that no multiple-comparison correction over 19 tasks can get under.
* ``benjamini_hochberg``: the per-task markers (†) are exploratory, so they control the false
  discovery rate over all (baseline, task) cells.

Across tasks, on per-task means (Demšar 2006, "Statistical comparisons of classifiers over
multiple data sets", JMLR 7:1-30):

* ``wilcoxon_signed_rank``: the reference against each baseline over the tasks. Differences
  are rounded before testing so that floating-point noise neither creates nor breaks ties, and
  zero differences are kept (Pratt), which is conservative, instead of being dropped, which
  would shrink n silently. Wins/ties/losses come with it.
* ``holm``: the confirmatory family (reference vs each baseline) is corrected with Holm's
  step-down procedure, which controls the family-wise error rate. Benavoli, Corani & Mangili
  2016 ("Should we really use post-hoc tests based on mean-ranks?", JMLR 17(5)) show that a
  mean-rank post-hoc verdict on A vs B depends on which other methods are in the pool, so
  pairwise claims come from Wilcoxon + Holm, not from Nemenyi.
* ``friedman``: the omnibus test over all methods with average ranks, the Iman-Davenport F
  (less conservative than the Friedman chi-square, Demšar §3.2.2) and the Nemenyi critical
  difference for the CD diagram, which is a summary picture of the ranking.

Aggregates (VTAB mean of 19 tasks, mean of group means, IQM, P(A>B)). Every interval here is
analytic, and its coverage of a stated target was measured by simulation with known truth
(``benchmarks/interval_coverage.py``; ``tests/test_interval_coverage.py`` checks it on every run).
A percentile seed bootstrap is not used: with 2-5 seeds per task it resamples with the plug-in
variance (divisor n) and covered 69-83 % instead of 95 % at 2-3 seeds.

* ``fixed_task_mean`` / ``fixed_task_difference`` / ``aggregate_summary``: the tasks are fixed
  (the question a benchmark on these tasks asks); the target is the weighted mean over them of
  each task's expected accuracy over seeds (or of the difference of two methods'). The interval is
  a t interval on Σ w_d x̄_d with variance Σ w_d² s_d²/n and the Welch-Satterthwaite df.
* ``random_task_mean``: ``--resample-tasks``: the tasks of each group are a sample of similar
  tasks; a t interval on the spread of per-task means within each group.
* ``iqm`` / ``iqm_interval``: the interquartile mean over all runs of all tasks with exact 25 %
  trimming at each end (boundary runs count partly), and a conservative t interval from the
  Efron-Stein bound on its variance.
* ``improvement_interval``: P(A>B) per task averaged over tasks, with a Wilson-type interval from
  the Birnbaum-Klose bound on the variance of a Mann-Whitney estimate: conservative, never
  degenerate.
* ``performance_profile``: the fraction of runs (over all tasks and seeds) above each threshold
  τ (Agarwal et al.'s score distributions), for a figure, without a band.
* ``few_shot_difference``: with 5 few-shot datasets no across-dataset test can reach p < 0.05
  (exact Wilcoxon floor 0.0625), so each shot count gets the mean difference with its fixed-task
  interval and the average P(A>B), and no p-value.
* ``binomial_se``: the standard error √(p(1-p)/n) of an accuracy p measured on a fixed test set
  of n examples. Every interval above is conditional on that one test split; this is the size
  of the sampling error the seeds do not see.

``mark_best`` decides bold/underline on values rounded to the displayed precision, so that
values that print the same get the same mark.

Missing values: per-task functions (``t_interval``, ``compare_seeds``, ``prob_superiority``,
``wilcoxon_signed_rank``) drop NaN (pairwise where paired) and report the n they used; the
corrections leave NaN p-values NaN and adjust over the others; ``friedman`` and the aggregates
need complete data and raise ValueError naming the incomplete cell.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

__all__ = [
    "AggregateSummary",
    "FewShotDifference",
    "FriedmanResult",
    "Interval",
    "SeedComparison",
    "WilcoxonResult",
    "benjamini_hochberg",
    "binomial_se",
    "aggregate_summary",
    "compare_seeds",
    "few_shot_difference",
    "friedman",
    "holm",
    "iqm",
    "fixed_task_difference",
    "fixed_task_mean",
    "improvement_interval",
    "iqm_interval",
    "random_task_mean",
    "TInterval",
    "performance_profile",
    "mark_best",
    "nemenyi_cd",
    "prob_superiority",
    "t_interval",
    "wilcoxon_signed_rank",
]

NAN = float("nan")

# A spread below this (relative to the values' magnitude, at least 1) counts as zero variance:
# it is floating-point noise, far below the 1/test-set-size resolution of an accuracy.
_ZERO_SPREAD = 1e-12


# --------------------------------------------------------------------------------------------
# Result types
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    """Mean with a two-sided Student-t confidence interval; ``half_width`` is what "±" shows."""

    mean: float
    half_width: float
    low: float
    high: float
    n: int


@dataclass(frozen=True)
class SeedComparison:
    """A vs B over seeds on one task: ``diff`` = mean(A) - mean(B), its t CI, p and P(A>B)."""

    diff: float
    low: float
    high: float
    pvalue: float
    prob_superiority: float
    n_a: int
    n_b: int
    test: str  # "welch" or "paired"


@dataclass(frozen=True)
class WilcoxonResult:
    """Two-sided Wilcoxon signed-rank test of x - y (Pratt zeros) with win/tie/loss counts of x vs y."""

    statistic: float
    pvalue: float
    n: int
    n_zero: int
    wins: int
    ties: int
    losses: int


@dataclass(frozen=True, eq=False)  # holds arrays: == would be ambiguous, so it is identity
class FriedmanResult:
    """Friedman test over N blocks and k methods; ``avg_ranks[j]`` is method j's mean rank (1 = best)."""

    avg_ranks: np.ndarray
    chi2: float
    p_chi2: float
    iman_davenport_f: float
    p_f: float
    cd: float
    n_blocks: int
    k: int


@dataclass(frozen=True)
class FewShotDifference:
    """A - B for one shot count: mean over datasets of the per-dataset mean difference, its CI, average P(A>B)."""

    diff: float
    low: float
    high: float
    prob_superiority: float
    n_datasets: int
    n_seeds: int


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _check_conf(conf: float) -> None:
    if not 0.0 < conf < 1.0:
        raise ValueError(f"conf must lie strictly between 0 and 1, got {conf}")


def _vector(x, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    return arr


def _frozen(x: np.ndarray) -> np.ndarray:
    """A read-only copy, so that arrays inside frozen results stay unchanged."""
    x = np.array(x, dtype=float)
    x.setflags(write=False)
    return x


def _is_constant(x: np.ndarray, scale: float | None = None) -> bool:
    """Whether x has zero spread up to floating-point noise (see _ZERO_SPREAD)."""
    if x.size == 0:
        return True
    if scale is None:
        scale = float(np.max(np.abs(x)))
    return float(np.ptp(x)) <= _ZERO_SPREAD * max(1.0, scale)


# --------------------------------------------------------------------------------------------
# Per task, over seeds
# --------------------------------------------------------------------------------------------


def t_interval(x, conf: float = 0.95) -> Interval:
    """Mean of ``x`` with its Student-t confidence interval: half-width t(1-(1-conf)/2, n-1)·s/√n.

    NaN entries are dropped (a missing seed); ``n`` counts the values used. n=0 gives all NaN,
    n=1 gives the value with a NaN half-width, identical values give half-width 0.
    """
    _check_conf(conf)
    x = _vector(x, "x")
    x = x[~np.isnan(x)]
    n = int(x.size)
    if n == 0:
        return Interval(NAN, NAN, NAN, NAN, 0)
    mean = float(np.mean(x))
    if n == 1:
        return Interval(mean, NAN, NAN, NAN, 1)
    half = 0.0
    if not _is_constant(x):
        half = float(stats.t.ppf(0.5 + conf / 2, n - 1) * np.std(x, ddof=1) / math.sqrt(n))
    return Interval(mean, half, mean - half, mean + half, n)


def prob_superiority(a, b) -> float:
    """P(A>B): the probability that a random run of A beats a random run of B, ties counted ½.

    Equals the Mann-Whitney U statistic of A divided by n_a·n_b. NaN entries are dropped; NaN if
    either sample is empty.
    """
    a = _vector(a, "a")
    b = _vector(b, "b")
    a = a[~np.isnan(a)]
    b = b[~np.isnan(b)]
    if a.size == 0 or b.size == 0:
        return NAN
    gt = np.count_nonzero(a[:, None] > b[None, :])
    eq = np.count_nonzero(a[:, None] == b[None, :])
    return float((gt + 0.5 * eq) / (a.size * b.size))


def compare_seeds(a, b, paired: bool = False, conf: float = 0.95) -> SeedComparison:
    """Method A against method B on one task, over seeds.

    ``paired=False``: Welch's t-test (``scipy.stats.ttest_ind(equal_var=False)``) with the
    Welch-Satterthwaite CI of mean(A) - mean(B). ``paired=True``: the paired t-test
    (``ttest_rel``) on seed-matched runs; a and b must then have the same length (ValueError
    otherwise) and ``a[i]``, ``b[i]`` must come from the same seed.

    NaN entries are dropped (pairwise when paired); ``n_a``, ``n_b`` count what was used.
    With fewer than 2 values in a sample (pairs when paired), p and the CI are NaN.

    Degenerate data: when the variance that the test divides by is zero (both samples constant
    for Welch, constant differences when paired), the CI is NaN, and p is 1 for equal means (no
    evidence of a difference) and NaN otherwise. Two or three identical
    seeds do not show that a method has no seed variance, so p = 0 with a zero-width interval
    would claim a certainty the data do not give (and would enter the Benjamini-Hochberg family
    as a discovery). A spread below 1e-12 (relative to the values' magnitude) counts as zero.
    A method identical to the reference gives diff 0, p 1 and P(A>B) 0.5.
    """
    _check_conf(conf)
    a = _vector(a, "a")
    b = _vector(b, "b")
    if paired:
        if a.size != b.size:
            raise ValueError(f"paired comparison needs equal lengths, got len(a)={a.size} and len(b)={b.size}")
        keep = ~(np.isnan(a) | np.isnan(b))
        a, b = a[keep], b[keep]
    else:
        a = a[~np.isnan(a)]
        b = b[~np.isnan(b)]
    n_a, n_b = int(a.size), int(b.size)
    test = "paired" if paired else "welch"
    if n_a == 0 or n_b == 0:
        return SeedComparison(NAN, NAN, NAN, NAN, NAN, n_a, n_b, test)
    diff = float(np.mean(a) - np.mean(b))
    psup = prob_superiority(a, b)
    if n_a < 2 or n_b < 2:
        return SeedComparison(diff, NAN, NAN, NAN, psup, n_a, n_b, test)
    scale = float(max(np.max(np.abs(a)), np.max(np.abs(b))))
    degenerate = _is_constant(a - b, scale) if paired else (_is_constant(a, scale) and _is_constant(b, scale))
    if degenerate:  # no spread to test against: no interval, and a p-value only for equal means
        equal = abs(diff) <= _ZERO_SPREAD * max(1.0, scale)
        return SeedComparison(0.0 if equal else diff, NAN, NAN, 1.0 if equal else NAN, psup, n_a, n_b, test)
    res = stats.ttest_rel(a, b) if paired else stats.ttest_ind(a, b, equal_var=False)
    ci = res.confidence_interval(confidence_level=conf)
    return SeedComparison(diff, float(ci.low), float(ci.high), float(res.pvalue), psup, n_a, n_b, test)


# --------------------------------------------------------------------------------------------
# Multiple comparisons
# --------------------------------------------------------------------------------------------


def _pvalues(p) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(p, dtype=float)
    if p.ndim != 1:
        raise ValueError(f"p-values must be one-dimensional, got shape {p.shape}")
    ok = ~np.isnan(p)
    if np.any((p[ok] < 0) | (p[ok] > 1)):
        raise ValueError("p-values must lie in [0, 1]")
    return p, ok


def _adjust_non_nan(p, adjust) -> np.ndarray:
    """Apply ``adjust`` to the non-NaN p-values only (the family is the tests that exist); NaN stays NaN."""
    p, ok = _pvalues(p)
    out = np.full(p.shape, NAN)
    if ok.any():
        out[ok] = adjust(p[ok])
    return out


def _holm(q: np.ndarray) -> np.ndarray:
    m = q.size
    order = np.argsort(q, kind="stable")
    res = np.empty(m)
    res[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * q[order]))
    return res


def holm(p) -> np.ndarray:
    """Holm step-down adjusted p-values (family-wise error rate).

    Sorted ascending, p_(i) is multiplied by (m - i + 1), a running maximum keeps the order, and
    values are capped at 1. scipy has no Holm; this equals
    ``statsmodels.stats.multitest.multipletests(p, method="holm")[1]`` (whose default is Holm-Šidák,
    not Holm). NaN entries stay NaN and do not count in m.
    """
    return _adjust_non_nan(p, _holm)


def benjamini_hochberg(p) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (false discovery rate): scipy's
    ``false_discovery_control(method="bh")`` over the non-NaN entries; NaN entries stay NaN."""
    return _adjust_non_nan(p, lambda q: stats.false_discovery_control(q, method="bh"))


# --------------------------------------------------------------------------------------------
# Across tasks
# --------------------------------------------------------------------------------------------


def wilcoxon_signed_rank(x, y, decimals: int = 6) -> WilcoxonResult:
    """Two-sided Wilcoxon signed-rank test of paired per-task scores x vs y.

    d = round(x - y, decimals) (so floating-point noise neither breaks nor creates ties); zero
    differences are kept in the ranking (``zero_method="pratt"``) and ``method="auto"`` (exact
    when possible, an exact permutation distribution for n <= 13 with ties or zeros, otherwise
    the normal approximation). Pairs with a NaN are dropped; ``n`` counts the pairs used, zeros
    included, and ``n_zero`` the zero differences. ``wins``/``ties``/``losses`` count d > 0, d = 0,
    d < 0 (x better, equal, worse when higher is better).

    ``statistic`` is min(R+, R-) over the non-zero differences. n < 2 gives NaN statistic and p;
    all differences zero gives statistic 0 and p = 1 (no evidence of any difference).
    """
    x = _vector(x, "x")
    y = _vector(y, "y")
    if x.size != y.size:
        raise ValueError(f"x and y must be paired, got len(x)={x.size} and len(y)={y.size}")
    d = x - y
    d = np.round(d[~np.isnan(d)], decimals)
    d[d == 0] = 0.0  # -0.0 from rounding is a zero, not a loss
    n = int(d.size)
    wins = int(np.count_nonzero(d > 0))
    losses = int(np.count_nonzero(d < 0))
    ties = n - wins - losses
    if n < 2:
        return WilcoxonResult(NAN, NAN, n, ties, wins, ties, losses)
    if ties == n:
        return WilcoxonResult(0.0, 1.0, n, ties, wins, ties, losses)
    res = stats.wilcoxon(d, zero_method="pratt", method="auto", alternative="two-sided")
    return WilcoxonResult(float(res.statistic), float(res.pvalue), n, ties, wins, ties, losses)


def nemenyi_cd(k: int, n_blocks: int, alpha: float = 0.05) -> float:
    """Nemenyi critical difference of average ranks: q_alpha·√(k(k+1)/(6N)) (Demšar 2006, §3.2.2).

    q_alpha is the studentized range quantile for k groups and infinite degrees of freedom,
    divided by √2 (Demšar's Table 5a: 1.960, 2.343, 2.569, 2.728, ... for k = 2, 3, 4, 5).
    """
    if k < 2 or n_blocks < 1:
        raise ValueError(f"the critical difference needs k >= 2 methods and N >= 1 blocks, got k={k}, N={n_blocks}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie strictly between 0 and 1, got {alpha}")
    q = stats.studentized_range.ppf(1.0 - alpha, k, np.inf) / math.sqrt(2.0)
    return float(q * math.sqrt(k * (k + 1) / (6.0 * n_blocks)))


def friedman(M, alpha: float = 0.05, decimals: int | None = 6) -> FriedmanResult:
    """Friedman test with Iman-Davenport F and the Nemenyi critical difference.

    ``M`` is (N blocks × k methods), higher is better. Ranks within each block give rank 1 to the
    best, ties get average ranks. ``chi2`` is the Friedman statistic with the usual tie correction
    (the same as ``scipy.stats.friedmanchisquare``; without ties it is Demšar's
    12N/(k(k+1))·[Σ R_j² - k(k+1)²/4]); ``iman_davenport_f`` = (N-1)χ²/(N(k-1)-χ²) on (k-1,
    (k-1)(N-1)) degrees of freedom. ``cd`` is the Nemenyi critical difference at ``alpha``.

    M is rounded to ``decimals`` before ranking (None: not rounded), as in ``wilcoxon_signed_rank``:
    two methods with the same seed results averaged in a different order differ in the last bit,
    and that must be a tie, not a rank difference.

    Degenerate cases: every block fully tied gives χ² = 0, F = 0 and both p = 1. Every block
    ranking the methods identically (χ² = N(k-1)) gives F = inf and p_f = 0.

    k = 2: there is no Friedman test here (it reduces to a sign test; use
    ``wilcoxon_signed_rank`` for two methods, as Demšar recommends), so ``chi2``, ``p_chi2``,
    ``iman_davenport_f`` and ``p_f`` are NaN; ``avg_ranks`` and ``cd`` are still given.

    Raises ValueError for k < 2, N < 2 or a NaN in M (a missing result; ranks are undefined).
    """
    M = np.asarray(M, dtype=float)
    if M.ndim != 2:
        raise ValueError(f"M must be (blocks × methods), got shape {M.shape}")
    N, k = M.shape
    if k < 2 or N < 2:
        raise ValueError(f"friedman needs at least 2 methods and 2 blocks, got M of shape {M.shape} (N={N}, k={k})")
    missing = np.argwhere(np.isnan(M))
    if missing.size:
        i, j = missing[0]
        raise ValueError(f"M has {len(missing)} NaN entries, e.g. block {i}, method {j}; ranks need complete blocks")
    if decimals is not None:
        M = np.round(M, decimals)
    ranks = stats.rankdata(-M, axis=1)  # average ranks for ties, rank 1 = highest
    avg = _frozen(ranks.mean(axis=0))
    cd = nemenyi_cd(k, N, alpha)
    if k == 2:
        return FriedmanResult(avg, NAN, NAN, NAN, NAN, cd, N, k)

    # Tie correction: 1 - Σ(t³ - t) / (N(k³ - k)) over the tie groups of every block.
    tie_sum = 0.0
    for row in ranks:
        _, counts = np.unique(row, return_counts=True)
        tie_sum += float(np.sum(counts.astype(float) ** 3 - counts))
    correction = 1.0 - tie_sum / (N * (k**3 - k))
    if correction <= 0.0:  # every block fully tied: no evidence of any difference
        return FriedmanResult(avg, 0.0, 1.0, 0.0, 1.0, cd, N, k)
    col_sums = ranks.sum(axis=0)
    raw = 12.0 / (N * k * (k + 1)) * float(np.sum(col_sums**2)) - 3.0 * N * (k + 1)
    chi2 = max(0.0, raw / correction)
    p_chi2 = float(stats.chi2.sf(chi2, k - 1))
    denom = N * (k - 1) - chi2
    if denom <= 1e-9 * N * (k - 1):  # perfect agreement of all blocks
        f, p_f = math.inf, 0.0
    else:
        f = (N - 1) * chi2 / denom
        p_f = float(stats.f.sf(f, k - 1, (k - 1) * (N - 1)))
    return FriedmanResult(avg, float(chi2), p_chi2, float(f), p_f, cd, N, k)


# --------------------------------------------------------------------------------------------
# Intervals across tasks (analytic; their coverage is measured by benchmarks/interval_coverage.py)
# --------------------------------------------------------------------------------------------


def _t_quantile(conf: float, df) -> np.ndarray:
    """t(½ + conf/2, df), NaN where df is not a positive finite number."""
    df = np.asarray(df, dtype=float)
    ok = np.isfinite(df) & (df > 0)
    return np.where(ok, stats.t.ppf(0.5 + conf / 2, np.where(ok, df, 1.0)), NAN)


def _satterthwaite(components, dfs) -> tuple[np.ndarray, np.ndarray]:
    """Sum V of independent variance components (last axis) and its Welch-Satterthwaite df,
    (Σ c)² / Σ c²/df_c. A component with df_c <= 0 (one seed) makes V and df NaN; V == 0 (no spread
    anywhere) gives df NaN, so no interval: a zero-width interval would claim certainty that a few
    identical seeds do not give."""
    c = np.asarray(components, dtype=float)
    dfs = np.broadcast_to(np.asarray(dfs, dtype=float), c.shape)
    V = c.sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        denom = np.where(dfs > 0, c**2 / np.where(dfs > 0, dfs, 1.0), NAN).sum(axis=-1)
        df = np.where(V > 0, V**2 / denom, NAN)
    V = np.where(np.isnan(denom), NAN, V)
    return V, df


def _seed_var(S: np.ndarray) -> np.ndarray:
    """Sample variance (ddof 1) over the last axis; 0 where the spread is rounding noise (see
    _ZERO_SPREAD), NaN with one seed."""
    if S.shape[-1] < 2:
        return np.full(S.shape[:-1], NAN)
    noise = np.ptp(S, axis=-1) <= _ZERO_SPREAD * np.maximum(1.0, np.abs(S).max(axis=-1))
    return np.where(noise, 0.0, S.var(axis=-1, ddof=1))


def _weights(D: int, weights) -> np.ndarray:
    if weights is None:
        return np.full(D, 1.0 / D)
    w = np.asarray(weights, dtype=float)
    if w.shape != (D,) or not np.isclose(w.sum(), 1.0) or (w < 0).any():
        raise ValueError(f"weights must be {D} non-negative numbers summing to 1, got {w}")
    return w


@dataclass(frozen=True, eq=False)
class TInterval:
    """Estimates with two-sided t intervals, vectorised: every field has the batch shape."""

    estimate: np.ndarray
    low: np.ndarray
    high: np.ndarray
    df: np.ndarray


def _t_result(estimate, V, df, conf, scale=1.0) -> TInterval:
    half = _t_quantile(conf, df) * scale * np.sqrt(V)
    return TInterval(np.asarray(estimate, float), estimate - half, estimate + half, np.asarray(df, float))


def fixed_task_mean(S, weights=None, conf: float = 0.95) -> TInterval:
    """Weighted mean over fixed tasks of the per-task seed means, with its Welch-Satterthwaite t interval.

    ``S`` is (..., D tasks, n seeds), complete; ``weights`` (D,) sum to 1 (None: equal). Target: the
    weighted mean over these D tasks of each task's expected accuracy over seeds. The variance is
    Σ w_d² s_d²/n, with the Welch-Satterthwaite df (Σ w_d² s_d²/n)² / Σ (w_d² s_d²/n)²/(n-1)
    (Satterthwaite 1946, Biometrics Bulletin 2(6)). One seed or no spread anywhere: no interval (NaN).
    """
    _check_conf(conf)
    S = np.asarray(S, dtype=float)
    n = S.shape[-1]
    w = _weights(S.shape[-2], weights)
    V, df = _satterthwaite(w**2 * _seed_var(S) / n, n - 1)
    return _t_result(S.mean(axis=-1) @ w, V, df, conf)


def fixed_task_difference(A, B, weights=None, conf: float = 0.95) -> TInterval:
    """Weighted mean over fixed tasks of mean(A_d) - mean(B_d), with its Welch-Satterthwaite t interval.

    ``A`` (..., D, n_a) and ``B`` (..., D, n_b) are complete. The 2D per-task variances s²/n of both
    methods are independent components (the per-task Welch test summed over tasks); if seed s is a
    common random number for both methods the positive correlation only makes the interval wider
    than needed. Target: the weighted mean over these tasks of the difference of expected accuracies.
    """
    _check_conf(conf)
    A = np.asarray(A, dtype=float)
    B = np.asarray(B, dtype=float)
    w = _weights(A.shape[-2], weights)
    na, nb = A.shape[-1], B.shape[-1]
    va, vb = _seed_var(A), _seed_var(B)
    va, vb = np.broadcast_arrays(va, vb)
    comps = np.concatenate([w**2 * va / na, w**2 * vb / nb], axis=-1)
    dfs = np.concatenate([np.full(va.shape[-1], na - 1.0), np.full(vb.shape[-1], nb - 1.0)])
    V, df = _satterthwaite(comps, dfs)
    return _t_result((A.mean(axis=-1) @ w) - (B.mean(axis=-1) @ w), V, df, conf)


def random_task_mean(M, groups=None, conf: float = 0.95) -> TInterval:
    """Mean of group means of per-task values ``M`` (..., D) with a t interval that treats the tasks of
    each group as a random sample of similar tasks (the --resample-tasks question).

    The variance of a group's mean is the variance of its task values over its task count; the mean
    of G group means adds them with weight 1/G², with the Welch-Satterthwaite df over groups (df
    |g| - 1 each). The spread of per-task means already holds the seed noise. A group of one task: NaN.
    """
    _check_conf(conf)
    M = np.asarray(M, dtype=float)
    members, weights = _group_slots(groups, M.shape[-1])
    G = len(members)
    comps, dfs = [], []
    for idx in members:
        k = idx.size
        v = _seed_var(M[..., idx])
        comps.append(v / k / G**2)
        dfs.append(k - 1.0)
    V, df = _satterthwaite(np.stack(comps, axis=-1), np.array(dfs))
    return _t_result(M @ weights, V, df, conf)


def _iqm_weights(N: int) -> np.ndarray:
    """Weight of each order statistic of N equally weighted values in the interquartile mean:
    the share of [i/N, (i+1)/N] inside [¼, ¾], over ½. The boundary values count partly, so exactly
    25 % is cut from each end whatever N is (``trim_mean`` cuts ⌊N/4⌋ whole values: 17 % at N = 6)."""
    lo = np.arange(N) / N
    return np.clip(np.minimum(lo + 1.0 / N, 0.75) - np.maximum(lo, 0.25), 0.0, None) / 0.5


def iqm(x, axis=None):
    """Interquartile mean: the mean of the empirical quantile function over [¼, ¾], over all values by
    default. Agarwal et al.'s aggregate over runs × tasks with exact 25 % trimming at either end."""
    x = np.asarray(x, dtype=float)
    if axis is None:
        x, axis = x.ravel(), 0
    x = np.sort(np.moveaxis(x, axis, -1), axis=-1)
    return x @ _iqm_weights(x.shape[-1])


def iqm_interval(S, conf: float = 0.95) -> TInterval:
    """IQM over all runs of ``S`` (..., D tasks, n seeds), complete, with a conservative t interval.

    Target: the IQM of the population of runs on these fixed tasks (the equal mixture of the tasks'
    run distributions). Moving one of the N = D·n values by δ moves the IQM by at most 2|δ|/N, so by
    the Efron-Stein inequality (Efron & Stein 1981, Ann. Statist. 9(3)) its variance is at most
    (2/N)²·Σ_d n·σ_d². The interval uses that bound with the seed variances s_d² and the
    Welch-Satterthwaite df: wider than needed where the trimming cuts whole tasks, never narrower.
    """
    _check_conf(conf)
    S = np.asarray(S, dtype=float)
    D, n = S.shape[-2:]
    N = D * n
    est = iqm(S.reshape(*S.shape[:-2], N), axis=-1)
    V, df = _satterthwaite(n * _seed_var(S), n - 1)
    return _t_result(est, V, df, conf, scale=2.0 / N)


def improvement_interval(X, Y, conf: float = 0.95) -> TInterval:
    """Average over tasks of P(X>Y) (ties ½) with a Wilson-type score interval that cannot be degenerate.

    ``X`` (..., D, n_x) and ``Y`` (..., D, n_y), complete. Target: the mean over these tasks of the
    probability that a new run of X beats a new run of Y. On one task the Mann-Whitney estimate has
    variance at most θ(1-θ)/min(n_x, n_y) (Birnbaum & Klose 1957, Ann. Math. Statist. 28(4)); averaged
    over D independent tasks that bound is at most θ̄(1-θ̄)/(D·min(n_x, n_y)) since θ(1-θ) is concave.
    The interval is every θ̄ whose bound-based z-score is below the normal quantile (the Wilson interval
    with N = D·min(n_x, n_y)): never [0, 0] or [1, 1], and conservative.
    """
    _check_conf(conf)
    X = np.asarray(X, dtype=float)
    Y = np.asarray(Y, dtype=float)
    gt = (X[..., :, None] > Y[..., None, :]).mean(axis=(-1, -2))
    eq = (X[..., :, None] == Y[..., None, :]).mean(axis=(-1, -2))
    est = (gt + 0.5 * eq).mean(axis=-1)
    N = X.shape[-2] * min(X.shape[-1], Y.shape[-1])
    z = stats.norm.ppf(0.5 + conf / 2)
    centre = (est + z * z / (2 * N)) / (1 + z * z / N)
    half = z / (1 + z * z / N) * np.sqrt(est * (1 - est) / N + z * z / (4 * N * N))
    return TInterval(np.asarray(est, float), centre - half, centre + half, np.full(np.shape(est), float(N)))


@dataclass(frozen=True, eq=False)  # holds arrays: == would be ambiguous, so it is identity
class AggregateSummary:
    """Per method: an aggregate over tasks with its t interval, and the difference to the reference.

    All arrays have one entry per method; the reference's own difference is 0 with interval [0, 0].
    ``random_tasks``: whether the intervals treat the tasks as a sample of similar tasks
    (:func:`random_task_mean`) instead of fixed (:func:`fixed_task_mean`, the default).
    """

    estimate: np.ndarray
    low: np.ndarray
    high: np.ndarray
    diff: np.ndarray
    diff_low: np.ndarray
    diff_high: np.ndarray
    reference_index: int
    conf: float
    random_tasks: bool = False


def aggregate_summary(
    S,
    groups,
    reference_index: int,
    conf: float = 0.95,
    random_tasks: bool = False,
    *,
    method_names=None,
    dataset_names=None,
) -> AggregateSummary:
    """Mean of group means per method (``groups`` None: mean of tasks) with its interval, and the
    difference to the reference with its interval. ``S`` is (methods × datasets × seeds), complete.

    Fixed tasks (default): :func:`fixed_task_mean` and :func:`fixed_task_difference`, Welch-
    Satterthwaite t intervals over the per-task seed variances. ``random_tasks``:
    :func:`random_task_mean` of the per-task means and of the per-task differences.
    """
    S = _check_scores(S, method_names, dataset_names)
    m, D, _ = S.shape
    if not -m <= reference_index < m:
        raise ValueError(f"reference_index {reference_index} is out of range for {m} methods")
    reference_index %= m
    _, weights = _group_slots(groups, D)
    if random_tasks:
        means = S.mean(axis=2)
        marg = random_task_mean(means, groups, conf)
        diff = random_task_mean(means - means[[reference_index]], groups, conf)
    else:
        marg = fixed_task_mean(S, weights, conf)
        diff = fixed_task_difference(S, S[[reference_index]], weights, conf)
    d, dlo, dhi = (np.array(v, dtype=float) for v in (diff.estimate, diff.low, diff.high))
    d[reference_index] = dlo[reference_index] = dhi[reference_index] = 0.0
    arrays = [_frozen(v) for v in (marg.estimate, marg.low, marg.high, d, dlo, dhi)]
    return AggregateSummary(*arrays, reference_index, conf, random_tasks)


def _check_scores(S, method_names=None, dataset_names=None) -> np.ndarray:
    S = np.asarray(S, dtype=float)
    if S.ndim != 3:
        raise ValueError(f"S must be (methods × datasets × seeds), got shape {S.shape}")
    m, D, n = S.shape
    if m == 0 or D == 0 or n == 0:
        raise ValueError(f"S must have at least one method, dataset and seed, got shape {S.shape}")
    bad = np.isnan(S)
    if bad.any():
        holes = [(int(i), int(j)) for i, j in np.argwhere(bad.any(axis=2))]
        mn = method_names if method_names is not None else range(m)
        dn = dataset_names if dataset_names is not None else range(D)
        mn, dn = list(mn), list(dn)
        listed = ", ".join(
            f"method {mn[i]!r} on dataset {dn[j]!r} ({int(bad[i, j].sum())} of {n} seeds missing)" for i, j in holes[:5]
        )
        more = f" and {len(holes) - 5} more" if len(holes) > 5 else ""
        raise ValueError(f"S is incomplete (NaN): {listed}{more}; the intervals need every seed of every cell")
    return S


def _group_slots(groups, D: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Dataset indices of each group, and the weight of each dataset in the mean of group means."""
    if groups is None:
        members = [np.arange(D)]
    else:
        labels = np.asarray(groups)
        if labels.shape != (D,):
            raise ValueError(f"groups must have one label per dataset ({D}), got shape {labels.shape}")
        _, inverse = np.unique(labels, return_inverse=True)
        members = [np.flatnonzero(inverse == g) for g in range(int(inverse.max()) + 1)]
    weights = np.empty(D)
    for idx in members:
        weights[idx] = 1.0 / (len(members) * idx.size)
    return members, weights


def performance_profile(S, thresholds) -> np.ndarray:
    """Score distribution per method: the fraction of its runs (all datasets and seeds) scoring above
    each threshold τ. ``S`` is (methods × datasets × seeds), complete; returns (methods × thresholds).

    No band: a pointwise seed-resampling band has the small-sample problem of every seed bootstrap
    (with 2-5 seeds per task it covers far less than its nominal level), so the figure is descriptive.
    """
    S = _check_scores(S)
    m, D, n = S.shape
    tau = np.asarray(thresholds, dtype=float)
    return (S.reshape(m, D * n, 1) > tau).mean(axis=1)


def binomial_se(acc, n) -> float:
    """√(p(1-p)/n): the standard error of an accuracy p scored on a fixed test set of n examples
    (NaN where n is unknown or not positive)."""
    acc = float(acc)
    if n is None or not np.isfinite(float(n)) or float(n) <= 0 or not np.isfinite(acc):
        return NAN
    return math.sqrt(acc * (1.0 - acc) / float(n))


def few_shot_difference(a, b, conf: float = 0.95) -> FewShotDifference:
    """A - B over the few-shot datasets for one shot count; no p-value (5 datasets cannot give one).

    ``a`` and ``b`` are (D datasets × n seeds). ``diff`` is the mean over datasets of
    mean(A) - mean(B) with the Welch-Satterthwaite t interval of :func:`fixed_task_difference`
    (datasets fixed); ``prob_superiority`` is P(A>B) over seeds averaged over datasets.
    Raises ValueError for different shapes or NaN.
    """
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"a and b must both be (datasets × seeds) of one shape, got {a.shape} and {b.shape}")
    _check_scores(np.stack([a, b]), ["a", "b"])
    r = fixed_task_difference(a, b, conf=conf)
    psup = float(np.mean([prob_superiority(a[d], b[d]) for d in range(a.shape[0])]))
    return FewShotDifference(float(r.estimate), float(r.low), float(r.high), psup, a.shape[0], a.shape[1])


# --------------------------------------------------------------------------------------------
# Table marks
# --------------------------------------------------------------------------------------------


def mark_best(values, decimals: int, higher_is_better: bool = True) -> list[str]:
    """ "best" / "second" / "" for each value, decided at the displayed precision.

    Values are rounded exactly as ``f"{v:.{decimals}f}"`` prints them, so pass them in the unit
    they are displayed in (percent with ``decimals=1`` for the tables). Values that print the same
    share a mark: two tied best are both "best" and the next distinct value is "second". NaN
    gets "".
    """
    if decimals < 0:
        raise ValueError(f"decimals must be >= 0, got {decimals}")
    shown = [float(f"{float(v):.{decimals}f}") for v in np.asarray(values, dtype=float).ravel()]
    distinct = sorted({v for v in shown if not math.isnan(v)}, reverse=higher_is_better)
    marks = {}
    if distinct:
        marks[distinct[0]] = "best"
    if len(distinct) > 1:
        marks[distinct[1]] = "second"
    return ["" if math.isnan(v) else marks.get(v, "") for v in shown]
