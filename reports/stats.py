"""Statistics for the report generator: small pure functions over numpy arrays.

Accuracies are fractions internally; rendering in percent is the caller's job. Every function
returns plain floats, numpy arrays or frozen dataclasses, gives NaN where a quantity is undefined,
and does not raise on legal but degenerate data (one seed, identical methods, all-tied ranks).
Only numpy and scipy are used here; the tests cross-check against statsmodels, scikit-posthocs,
autorank, rliable's metrics and scipy.stats.bootstrap. rliable's own bootstrap module is not used:
it needs arch<8, which does not import under pandas 3.

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

Aggregates (VTAB mean of 19 tasks, mean of group means, IQM):

* ``two_level_bootstrap`` / ``bootstrap_summary``: the stratified bootstrap of Agarwal et al.
  2021 (NeurIPS, "Deep reinforcement learning at the edge of the statistical precipice"). By
  default the tasks stay fixed and the seeds are resampled within each task: the question a
  benchmark on fixed tasks asks, and rliable's default. Resampling tasks as well (within their
  group) asks how the result generalises to similar tasks; with a handful of tasks it has few
  distinct resamples (3 tasks: 10) and covers far less than its nominal level, so callers allow
  it only from 10 tasks on. The same indices are used for every method, so differences stay
  paired: the CI of the difference to the reference is reported from the same draws, because
  marginal intervals are dominated by between-task spread and overlap even when the paired
  difference is clear.
* Monte Carlo error: a percentile bound from B draws is itself random. ``bootstrap_summary`` and
  ``probability_of_improvement`` keep drawing (doubling B up to ``max_boot``) while a bound's
  Monte Carlo band (the order statistics q·B ± 3·√(B·q(1-q))) straddles the value that decides
  the sign (0 for a difference, ½ for P(A>B)), and flag a bound whose sign is still unsettled;
  they also return the Monte Carlo standard error of their bounds.
* ``iqm`` / ``iqm_summary``: the interquartile mean over all runs of all tasks (the 25 %
  trimmed mean, ``scipy.stats.trim_mean``), Agarwal et al.'s robust aggregate, with the same
  seed-resampling interval.
* ``probability_of_improvement``: P(A>B) per task averaged over tasks, with an interval from
  resampling each method's seeds independently within each task (rliable's
  ``StratifiedIndependentBootstrap``).
* ``performance_profile``: the fraction of runs (over all tasks and seeds) above each threshold
  τ, with a pointwise seed-resampling band (Agarwal et al.'s score distributions).
* ``few_shot_difference``: with 5 few-shot datasets no across-dataset test can reach p < 0.05
  (exact Wilcoxon floor 0.0625), so each shot count gets the mean difference with a bootstrap
  CI over seeds (datasets fixed) and the average P(A>B) (Agarwal et al.'s average probability of
  improvement), and no p-value.
* ``binomial_se``: the standard error √(p(1-p)/n) of an accuracy p measured on a fixed test set
  of n examples. Every interval above is conditional on that one test split; this is the size
  of the sampling error the seeds do not see.

``mark_best`` decides bold/underline on values rounded to the displayed precision, so that
values that print the same get the same mark.

A caveat on the seed-level bootstrap: resampling n seeds uses their plug-in variance (divisor n),
so with 5 seeds per task the seed part of a bootstrap interval is about √(4/5) ≈ 0.89 times as wide
as a t-based one. Averaging over many tasks makes the normal shape good; the narrowness remains, so
the seed-only intervals are slightly optimistic.

Missing values: per-task functions (``t_interval``, ``compare_seeds``, ``prob_superiority``,
``wilcoxon_signed_rank``) drop NaN (pairwise where paired) and report the n they used; the
corrections leave NaN p-values NaN and adjust over the others; ``friedman`` and the bootstraps
need complete data and raise ValueError naming the incomplete cell.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

__all__ = [
    "BootstrapSummary",
    "IQMSummary",
    "ImprovementProbability",
    "FewShotDifference",
    "FriedmanResult",
    "Interval",
    "SeedComparison",
    "WilcoxonResult",
    "benjamini_hochberg",
    "binomial_se",
    "bootstrap_summary",
    "compare_seeds",
    "few_shot_difference",
    "friedman",
    "holm",
    "iqm",
    "iqm_summary",
    "performance_profile",
    "probability_of_improvement",
    "mark_best",
    "nemenyi_cd",
    "percentile_interval",
    "prob_superiority",
    "t_interval",
    "two_level_bootstrap",
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


@dataclass(frozen=True, eq=False)  # holds arrays: == would be ambiguous, so it is identity
class BootstrapSummary:
    """Per method: point estimate and CI of the aggregate, and the difference to the reference with its CI.

    All arrays have one entry per method. ``diff`` is ``estimate - estimate[reference_index]``; its CI
    comes from the same (paired) draws, so the reference's own row is 0 with CI [0, 0].
    ``n_boot`` is the number of draws used (at least the number asked for; more where a bound's sign
    needed them), ``mc_se`` the largest Monte Carlo standard error of any bound, and
    ``diff_unsettled[i]`` (low, high) says whether the sign of that bound of method i's difference
    is still within Monte Carlo error after ``max_boot`` draws.
    """

    estimate: np.ndarray
    low: np.ndarray
    high: np.ndarray
    diff: np.ndarray
    diff_low: np.ndarray
    diff_high: np.ndarray
    reference_index: int
    conf: float
    n_boot: int
    resample_datasets: bool
    mc_se: float = NAN
    diff_unsettled: np.ndarray | None = None


@dataclass(frozen=True, eq=False)
class IQMSummary:
    """Per method: the interquartile mean over all (task, seed) runs and its seed-resampling CI."""

    estimate: np.ndarray
    low: np.ndarray
    high: np.ndarray
    n_boot: int
    mc_se: float


@dataclass(frozen=True)
class ImprovementProbability:
    """Average over tasks of P(A>B) (a run of A beats a run of B, ties ½), with its bootstrap CI.

    ``unsettled`` (low, high): whether that bound's side of ½ is still within Monte Carlo error.
    """

    estimate: float
    low: float
    high: float
    n_tasks: int
    n_boot: int
    mc_se: float
    unsettled: tuple[bool, bool] = (False, False)


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
    for Welch, constant differences when paired), the difference is deterministic. Equal means
    then give p = 1 and CI [0, 0]; different means give p = 0 and CI [diff, diff]. A spread
    below 1e-12 (relative to the values' magnitude) counts as zero; it is rounding noise.
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
    if degenerate:
        if abs(diff) <= _ZERO_SPREAD * max(1.0, scale):
            return SeedComparison(0.0, 0.0, 0.0, 1.0, psup, n_a, n_b, test)
        return SeedComparison(diff, diff, diff, 0.0, psup, n_a, n_b, test)
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
# Aggregates: stratified two-level bootstrap
# --------------------------------------------------------------------------------------------


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
        raise ValueError(f"S is incomplete (NaN): {listed}{more}; the bootstrap needs every seed of every cell")
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


def two_level_bootstrap(
    S,
    groups=None,
    n_boot: int = 10_000,
    resample_datasets: bool = False,
    seed: int | tuple[int, ...] = 0,
    *,
    method_names=None,
    dataset_names=None,
) -> np.ndarray:
    """Bootstrap draws of the mean of group means, shape (n_boot, m).

    ``S`` is (m methods, D datasets, n seeds). ``groups`` gives one label per dataset (None: one
    group, i.e. the plain mean over datasets). Each draw first resamples datasets with
    replacement within each group (when ``resample_datasets``; by default datasets are fixed),
    then resamples the n seeds with replacement within each drawn dataset, and averages: seeds
    within a dataset, datasets within a group, then the groups with equal weight. The same
    indices are used for every method, so ``draws[:, i] - draws[:, j]`` are paired draws of the
    difference. Deterministic given ``seed``.

    Raises ValueError if S contains NaN, naming the incomplete (method, dataset) cells
    (``method_names`` / ``dataset_names`` label them; indices otherwise).
    """
    S = _check_scores(S, method_names, dataset_names)
    m, D, n = S.shape
    if n_boot < 1:
        raise ValueError(f"n_boot must be positive, got {n_boot}")
    members, weights = _group_slots(groups, D)
    rng = np.random.default_rng(seed)
    # Dataset slots keep their group: slot j always holds a dataset of j's group.
    if resample_datasets:
        datasets = np.empty((n_boot, D), dtype=np.intp)
        for idx in members:
            datasets[:, idx] = idx[rng.integers(0, idx.size, size=(n_boot, idx.size))]
    else:
        datasets = np.broadcast_to(np.arange(D), (n_boot, D))
    seeds = rng.integers(0, n, size=(n_boot, D, n))
    flat = S.reshape(m, D * n)
    out = np.empty((n_boot, m))
    chunk = max(1, 2**21 // max(1, m * D * n))  # bound the memory of one gather to ~16 MB
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        cells = datasets[start:stop, :, None] * n + seeds[start:stop]  # (b, D, n) indices into flat
        dataset_means = flat[:, cells].mean(axis=-1)  # (m, b, D)
        out[start:stop] = (dataset_means @ weights).T
    return out


def percentile_interval(draws, conf: float = 0.95) -> np.ndarray:
    """Percentile interval of bootstrap draws along axis 0: ``array([low, high])`` (shape (2, ...)).

    Unpacks as ``low, high = percentile_interval(draws)``. NaN where draws are empty or contain NaN.
    """
    _check_conf(conf)
    draws = np.asarray(draws, dtype=float)
    tail = 100.0 * (1.0 - conf) / 2.0
    if draws.shape[0] == 0:
        return np.full((2,) + draws.shape[1:], NAN)
    return np.percentile(draws, [tail, 100.0 - tail], axis=0)


# Monte Carlo bands of percentile bounds use the order statistics q·B ± this many binomial SDs.
_MC_Z = 3.0


def _bound_bands(draws: np.ndarray, conf: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Monte Carlo bands of both percentile bounds of every column of ``draws`` (B × k).

    A percentile bound is the q·B-th order statistic; the rank of the true q-quantile among B draws
    is Binomial(B, q), so the order statistics at q·B ± z·√(B·q(1-q)) bracket it. Returns
    (band_low, band_high) of shape (2, k) (rows: lower bound, upper bound) and the Monte Carlo
    standard error of each bound, (half the band's width)/z.
    """
    B = draws.shape[0]
    ordered = np.sort(draws, axis=0)
    lows, highs = [], []
    for q in ((1 - conf) / 2, (1 + conf) / 2):
        spread = _MC_Z * math.sqrt(B * q * (1 - q))
        lo = int(np.clip(math.floor(q * B - spread), 0, B - 1))
        hi = int(np.clip(math.ceil(q * B + spread), 0, B - 1))
        lows.append(ordered[lo])
        highs.append(ordered[hi])
    band_low, band_high = np.array(lows), np.array(highs)
    return band_low, band_high, (band_high - band_low) / (2 * _MC_Z)


def _unsettled(draws: np.ndarray, conf: float, centre: np.ndarray) -> tuple[np.ndarray, float]:
    """Per column and bound (2 × k): whether the bound's Monte Carlo band contains ``centre``
    (so its side of the centre could change with the bootstrap seed), and the largest MC SE."""
    band_low, band_high, se = _bound_bands(draws, conf)
    tol = 1e-12
    straddles = (band_low < centre - tol) & (band_high > centre + tol)
    finite = se[np.isfinite(se)]
    return straddles, float(finite.max()) if finite.size else NAN


def _adaptive_draws(draw, n_boot: int, max_boot: int, conf: float, centre, seed) -> np.ndarray:
    """Draws from ``draw(b, seed)`` (b × k), doubled until no bound straddles ``centre`` or
    ``max_boot`` is reached. The first ``n_boot`` draws are those of ``seed`` itself, so a call that
    needs no more draws equals a plain bootstrap with that seed."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be positive, got {n_boot}")
    draws = draw(n_boot, seed)
    base = seed if isinstance(seed, tuple) else (seed,)
    round_ = 1
    while draws.shape[0] < max_boot:
        straddles, _ = _unsettled(draws, conf, centre)
        if not straddles.any():
            break
        more = min(draws.shape[0], max_boot - draws.shape[0])
        draws = np.concatenate([draws, draw(more, (*base, round_))])
        round_ += 1
    return draws


def bootstrap_summary(
    S,
    groups,
    reference_index: int,
    n_boot: int = 10_000,
    resample_datasets: bool = False,
    seed: int = 0,
    conf: float = 0.95,
    *,
    max_boot: int = 160_000,
    method_names=None,
    dataset_names=None,
) -> BootstrapSummary:
    """Mean of group means per method with its bootstrap CI, and the difference to the reference.

    The point estimates come from the full data (seed means, then group means, then their mean);
    the intervals are percentile intervals of ``two_level_bootstrap`` draws, and the difference
    intervals come from the same paired draws. ``resample_datasets=False`` (the default) keeps the
    datasets fixed and resamples seeds (the benchmark's interval); True resamples datasets within
    groups too (the generalisation interval); label which one.

    Starting from ``n_boot`` draws, the draws are doubled (up to ``max_boot``) while the Monte Carlo
    band of a difference bound contains 0; ``diff_unsettled`` flags a bound whose sign is still
    undecided at ``max_boot``.
    """
    S = _check_scores(S, method_names, dataset_names)
    m, D, _ = S.shape
    if not -m <= reference_index < m:
        raise ValueError(f"reference_index {reference_index} is out of range for {m} methods")
    reference_index %= m
    _, weights = _group_slots(groups, D)
    estimate = S.mean(axis=2) @ weights

    def draw(b, s):
        d = two_level_bootstrap(S, groups, b, resample_datasets, s)
        return np.concatenate([d, d - d[:, [reference_index]]], axis=1)  # marginals, then differences

    centre = np.concatenate([np.full(m, -np.inf), np.zeros(m)])  # only the differences' signs matter
    centre[m + reference_index] = -np.inf
    draws = _adaptive_draws(draw, n_boot, max(n_boot, max_boot), conf, centre, seed)
    low, high = percentile_interval(draws, conf)
    straddles, mc_se = _unsettled(draws, conf, centre)
    diff = estimate - estimate[reference_index]
    diff_low, diff_high = low[m:].copy(), high[m:].copy()
    diff_low[reference_index] = diff_high[reference_index] = diff[reference_index] = 0.0
    unsettled = straddles[:, m:].T.copy()  # (m, 2): low, high
    unsettled.setflags(write=False)
    arrays = [_frozen(v) for v in (estimate, low[:m], high[:m], diff, diff_low, diff_high)]
    return BootstrapSummary(*arrays, reference_index, conf, int(draws.shape[0]), resample_datasets, mc_se, unsettled)


def iqm(x, axis=None):
    """Interquartile mean: the mean of the middle 50 % (``scipy.stats.trim_mean(x, 0.25)``), over all
    values by default, as ``rliable.metrics.aggregate_iqm`` computes it over runs × tasks."""
    return stats.trim_mean(np.asarray(x, dtype=float), 0.25, axis=axis)


def _seed_indices(rng: np.random.Generator, b: int, D: int, n: int) -> np.ndarray:
    return rng.integers(0, n, size=(b, D, n))


def iqm_summary(
    S, n_boot: int = 10_000, seed: int = 0, conf: float = 0.95, *, method_names=None, dataset_names=None
) -> IQMSummary:
    """Each method's IQM over all its (dataset, seed) scores, with the percentile CI of the
    stratified bootstrap that resamples seeds within each dataset (datasets fixed; the same seed
    indices for every method). ``S`` is (methods × datasets × seeds), complete."""
    S = _check_scores(S, method_names, dataset_names)
    m, D, n = S.shape
    estimate = iqm(S.reshape(m, D * n), axis=1)

    def draw(b, s):
        rng = np.random.default_rng(s)
        out = np.empty((b, m))
        chunk = max(1, 2**21 // max(1, m * D * n))
        for start in range(0, b, chunk):
            idx = _seed_indices(rng, min(chunk, b - start), D, n)  # (c, D, n)
            picked = np.take_along_axis(S[:, None], idx[None], axis=3)  # (m, c, D, n)
            out[start : start + idx.shape[0]] = iqm(picked.reshape(m, idx.shape[0], D * n), axis=2).T
        return out

    draws = draw(n_boot, seed)
    low, high = percentile_interval(draws, conf)
    _, mc_se = _unsettled(draws, conf, np.full(m, -np.inf))
    return IQMSummary(_frozen(estimate), _frozen(low), _frozen(high), n_boot, mc_se)


def _mean_prob_superiority(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """P(X>Y) per task averaged over tasks, vectorised over leading axes: X, Y are (..., D, n)."""
    gt = (X[..., :, None] > Y[..., None, :]).mean(axis=(-1, -2))
    eq = (X[..., :, None] == Y[..., None, :]).mean(axis=(-1, -2))
    return (gt + 0.5 * eq).mean(axis=-1)


def probability_of_improvement(
    X, Y, n_boot: int = 10_000, seed: int = 0, conf: float = 0.95, *, max_boot: int = 160_000
) -> ImprovementProbability:
    """Agarwal et al.'s average probability of improvement of X over Y, with its interval.

    ``X`` and ``Y`` are (datasets × seeds), complete (the seed counts may differ). The estimate is
    the mean over datasets of P(X_d > Y_d) (ties ½: the Mann-Whitney U statistic over n_x·n_y,
    as ``rliable.metrics.probability_of_improvement``). The interval resamples X's and Y's seeds
    independently within each dataset (datasets fixed), as rliable's stratified independent
    bootstrap; draws are added while a bound's side of ½ is within Monte Carlo error.
    """
    X = np.asarray(X, dtype=float)
    Y = np.asarray(Y, dtype=float)
    if X.ndim != 2 or Y.ndim != 2 or X.shape[0] != Y.shape[0]:
        raise ValueError(f"X and Y must be (datasets × seeds) with the same datasets, got {X.shape} and {Y.shape}")
    if np.isnan(X).any() or np.isnan(Y).any():
        raise ValueError("X and Y must be complete (no NaN): the bootstrap needs every seed of every dataset")
    D = X.shape[0]
    estimate = float(_mean_prob_superiority(X, Y))

    def draw(b, s):
        rng = np.random.default_rng(s)
        out = np.empty((b, 1))
        chunk = max(1, 2**20 // max(1, D * X.shape[1] * Y.shape[1]))
        for start in range(0, b, chunk):
            c = min(chunk, b - start)
            xi = _seed_indices(rng, c, D, X.shape[1])
            yi = _seed_indices(rng, c, D, Y.shape[1])
            xs = np.take_along_axis(np.broadcast_to(X, (c, *X.shape)), xi, axis=2)
            ys = np.take_along_axis(np.broadcast_to(Y, (c, *Y.shape)), yi, axis=2)
            out[start : start + c, 0] = _mean_prob_superiority(xs, ys)
        return out

    centre = np.array([0.5])
    draws = _adaptive_draws(draw, n_boot, max(n_boot, max_boot), conf, centre, seed)
    (low,), (high,) = percentile_interval(draws, conf)
    straddles, mc_se = _unsettled(draws, conf, centre)
    return ImprovementProbability(
        estimate, float(low), float(high), D, int(draws.shape[0]), mc_se, (bool(straddles[0, 0]), bool(straddles[1, 0]))
    )


def performance_profile(
    S, thresholds, n_boot: int = 2_000, seed: int = 0, conf: float = 0.95
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Score distribution per method: the fraction of its runs (all datasets and seeds) scoring above
    each threshold τ, with a pointwise percentile band from resampling seeds within each dataset.

    ``S`` is (methods × datasets × seeds), complete; returns (profile, low, high), each
    (methods × thresholds).
    """
    S = _check_scores(S)
    m, D, n = S.shape
    tau = np.asarray(thresholds, dtype=float)
    profile = (S.reshape(m, D * n, 1) > tau).mean(axis=1)
    rng = np.random.default_rng(seed)
    draws = np.empty((n_boot, m, tau.size))
    chunk = max(1, 2**21 // max(1, m * D * n * max(1, tau.size) // 8))
    for start in range(0, n_boot, chunk):
        c = min(chunk, n_boot - start)
        idx = _seed_indices(rng, c, D, n)
        picked = np.take_along_axis(S[:, None], idx[None], axis=3).reshape(m, c, D * n)
        draws[start : start + c] = (picked[..., None] > tau).mean(axis=2).transpose(1, 0, 2)
    low, high = percentile_interval(draws, conf)
    return profile, low, high


def binomial_se(acc, n) -> float:
    """√(p(1-p)/n): the standard error of an accuracy p scored on a fixed test set of n examples
    (NaN where n is unknown or not positive)."""
    acc = float(acc)
    if n is None or not np.isfinite(float(n)) or float(n) <= 0 or not np.isfinite(acc):
        return NAN
    return math.sqrt(acc * (1.0 - acc) / float(n))


def few_shot_difference(a, b, n_boot: int = 10_000, seed: int = 0, conf: float = 0.95) -> FewShotDifference:
    """A - B over the few-shot datasets for one shot count; no p-value (5 datasets cannot give one).

    ``a`` and ``b`` are (D datasets × n seeds). ``diff`` is the mean over datasets of
    mean(A) - mean(B); its CI resamples seeds within each dataset with datasets fixed (the
    seed-only two-level bootstrap), with the same seed indices for A and B (seed s is the same
    few-shot subset for both). ``prob_superiority`` is P(A>B) over seeds averaged over datasets.
    Raises ValueError for different shapes or NaN (naming the dataset).
    """
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"a and b must both be (datasets × seeds) of one shape, got {a.shape} and {b.shape}")
    S = np.stack([a, b])
    draws = two_level_bootstrap(S, None, n_boot, resample_datasets=False, seed=seed, method_names=["a", "b"])
    low, high = percentile_interval(draws[:, 0] - draws[:, 1], conf)
    diff = float(np.mean(a.mean(axis=1) - b.mean(axis=1)))
    psup = float(np.mean([prob_superiority(a[d], b[d]) for d in range(a.shape[0])]))
    return FewShotDifference(diff, float(low), float(high), psup, a.shape[0], a.shape[1])


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
