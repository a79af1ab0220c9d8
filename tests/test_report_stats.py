"""reports.stats against independent computations: hand calculations, published tables, statsmodels,
scikit-posthocs and autorank (the last three only as cross-checks; they are skipped when absent)."""

from __future__ import annotations

import itertools
import math
import statistics
import time
import warnings

import numpy as np
import pytest
from scipy import stats

from reports.stats import (
    BootstrapSummary,
    benjamini_hochberg,
    binomial_se,
    bootstrap_summary,
    compare_seeds,
    few_shot_difference,
    friedman,
    holm,
    iqm,
    iqm_summary,
    mark_best,
    nemenyi_cd,
    percentile_interval,
    performance_profile,
    prob_superiority,
    probability_of_improvement,
    t_interval,
    two_level_bootstrap,
    wilcoxon_signed_rank,
)


@pytest.fixture
def no_warnings():
    """Turn every warning into an error for the duration of a test."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# ---------------------------------------------------------------------------------------------
# t_interval
# ---------------------------------------------------------------------------------------------


def test_t_interval_with_five_seeds_is_2776_s_over_root5():
    x = [0.712, 0.698, 0.731, 0.705, 0.720]
    r = t_interval(x)
    s = statistics.stdev(x)
    # t(0.975, 4) = 2.776 in any printed table
    assert r.half_width == pytest.approx(2.776 * s / math.sqrt(5), rel=2e-4)
    assert r.mean == pytest.approx(statistics.fmean(x), abs=1e-15)
    assert r.low == pytest.approx(r.mean - r.half_width) and r.high == pytest.approx(r.mean + r.half_width)
    assert r.n == 5


def test_t_interval_matches_statsmodels():
    weightstats = pytest.importorskip("statsmodels.stats.weightstats")
    x = np.random.default_rng(3).normal(0.8, 0.02, size=7)
    for conf in (0.95, 0.9):
        low, high = weightstats.DescrStatsW(x).tconfint_mean(alpha=1 - conf)
        r = t_interval(x, conf)
        assert (r.low, r.high) == pytest.approx((low, high), rel=1e-12)
    assert t_interval(x, 0.9).half_width < t_interval(x, 0.95).half_width


def test_t_interval_degenerate_cases(no_warnings):
    one = t_interval([0.8])
    assert one.mean == 0.8 and one.n == 1
    assert math.isnan(one.half_width) and math.isnan(one.low) and math.isnan(one.high)
    same = t_interval([0.1] * 5)
    assert same.half_width == 0.0 and same.low == same.high == same.mean
    assert same.mean == pytest.approx(0.1)
    empty = t_interval([])
    assert empty.n == 0 and math.isnan(empty.mean)


def test_t_interval_drops_nan_seeds():
    with_nan = t_interval([0.70, np.nan, 0.72, 0.71, 0.69])
    without = t_interval([0.70, 0.72, 0.71, 0.69])
    assert with_nan == without and with_nan.n == 4


# ---------------------------------------------------------------------------------------------
# compare_seeds and prob_superiority
# ---------------------------------------------------------------------------------------------

A = np.array([0.812, 0.805, 0.821, 0.809, 0.816])
B = np.array([0.801, 0.799, 0.811, 0.790, 0.806])


def test_welch_by_hand():
    r = compare_seeds(A, B)
    va, vb = statistics.variance(A) / 5, statistics.variance(B) / 5
    df = (va + vb) ** 2 / (va**2 / 4 + vb**2 / 4)  # Welch-Satterthwaite
    t = (A.mean() - B.mean()) / math.sqrt(va + vb)
    half = stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    assert r.test == "welch" and (r.n_a, r.n_b) == (5, 5)
    assert r.diff == pytest.approx(A.mean() - B.mean())
    assert (r.low, r.high) == pytest.approx((r.diff - half, r.diff + half), rel=1e-10)
    assert r.pvalue == pytest.approx(2 * stats.t.sf(abs(t), df), rel=1e-10)


def test_welch_and_paired_match_statsmodels():
    ws = pytest.importorskip("statsmodels.stats.weightstats")
    a = np.array([0.70, 0.74, 0.69, 0.72])
    b = np.array([0.66, 0.69, 0.70, 0.68, 0.64, 0.67])
    cm = ws.CompareMeans(ws.DescrStatsW(a), ws.DescrStatsW(b))
    r = compare_seeds(a, b)
    assert (r.low, r.high) == pytest.approx(cm.tconfint_diff(alpha=0.05, usevar="unequal"), rel=1e-10)
    assert r.pvalue == pytest.approx(cm.ttest_ind(usevar="unequal")[1], rel=1e-10)

    p = compare_seeds(A, B, paired=True)
    d = ws.DescrStatsW(A - B)
    assert p.test == "paired"
    assert (p.low, p.high) == pytest.approx(d.tconfint_mean(alpha=0.05), rel=1e-10)
    assert p.pvalue == pytest.approx(d.ttest_mean(0.0)[1], rel=1e-10)
    # pairing removes the shared seed effect here, so the paired CI is narrower than Welch's
    w = compare_seeds(A, B)
    assert p.high - p.low < w.high - w.low


def test_paired_needs_equal_lengths():
    with pytest.raises(ValueError, match=r"len\(a\)=5.*len\(b\)=4"):
        compare_seeds(A, B[:4], paired=True)


@pytest.mark.parametrize("paired", [False, True])
def test_a_method_identical_to_the_reference(paired, no_warnings):
    r = compare_seeds(A, A.copy(), paired=paired)
    assert r.diff == 0.0 and r.pvalue == 1.0 and r.prob_superiority == 0.5
    assert r.low <= 0.0 <= r.high


def test_welch_identical_method_gives_symmetric_ci():
    r = compare_seeds(A, A.copy())
    assert r.low == pytest.approx(-r.high) and r.high > 0


def test_zero_variance_samples(no_warnings):
    same = compare_seeds([0.8] * 5, [0.8] * 5)
    assert (same.diff, same.low, same.high, same.pvalue) == (0.0, 0.0, 0.0, 1.0)
    apart = compare_seeds([0.8] * 5, [0.75] * 5)
    assert apart.pvalue == 0.0
    assert apart.low == apart.high == apart.diff == pytest.approx(0.05)
    assert apart.prob_superiority == 1.0


def test_paired_constant_shift_is_deterministic(no_warnings):
    b = np.array([0.61, 0.67, 0.70, 0.64, 0.66])
    r = compare_seeds(b + 0.01, b, paired=True)  # differences equal up to rounding noise
    assert r.pvalue == 0.0
    assert (r.low, r.high) == pytest.approx((0.01, 0.01), abs=1e-14)
    # Welch on the same data sees two spread-out samples: no deterministic difference
    assert compare_seeds(b + 0.01, b).pvalue > 0.5


def test_one_seed_gives_nan_test_but_a_difference(no_warnings):
    r = compare_seeds([0.8], [0.7, 0.75, 0.72])
    assert r.diff == pytest.approx(0.8 - np.mean([0.7, 0.75, 0.72]))
    assert math.isnan(r.pvalue) and math.isnan(r.low) and math.isnan(r.high)
    assert r.prob_superiority == 1.0


def test_compare_seeds_drops_nan():
    assert compare_seeds(np.append(A, np.nan), B) == compare_seeds(A, B)
    a, b = A.copy(), B.copy()
    a[1] = np.nan
    assert compare_seeds(a, b, paired=True) == compare_seeds(np.delete(A, 1), np.delete(B, 1), paired=True)


def test_prob_superiority_by_hand_and_against_mann_whitney():
    # pairs (1,1) tie, (1,0) win, (2,1) win, (2,0) win -> 3.5 / 4
    assert prob_superiority([1, 2], [1, 0]) == 0.875
    assert prob_superiority([3, 4], [1, 2]) == 1.0 and prob_superiority([1, 2], [3, 4]) == 0.0
    rng = np.random.default_rng(0)
    for _ in range(5):
        a, b = rng.integers(0, 4, 5).astype(float), rng.integers(0, 4, 6).astype(float)  # many ties
        u = stats.mannwhitneyu(a, b, alternative="greater").statistic
        assert prob_superiority(a, b) == pytest.approx(u / 30)
    assert math.isnan(prob_superiority([], [1.0]))


# ---------------------------------------------------------------------------------------------
# holm and benjamini_hochberg
# ---------------------------------------------------------------------------------------------


def test_holm_and_bh_by_hand():
    # Holm: sorted 0.01*3, 0.03*2, 0.04*1 -> running max 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    # BH: sorted 0.01*4/1, 0.03*4/2, 0.04*4/3, 0.2*4/4 -> running min from the top
    assert benjamini_hochberg([0.01, 0.04, 0.03, 0.2]) == pytest.approx([0.04, 0.16 / 3, 0.16 / 3, 0.2])
    assert holm([0.5, 0.6])[1] == 1.0  # capped


def test_holm_and_bh_match_statsmodels_and_scipy():
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    rng = np.random.default_rng(1)
    for m in (1, 4, 19, 76):
        p = rng.uniform(0, 0.2, m) ** 2
        p[: m // 3] = p[0]  # ties
        rng.shuffle(p)
        assert holm(p) == pytest.approx(multitest.multipletests(p, method="holm")[1], abs=1e-15)
        assert benjamini_hochberg(p) == pytest.approx(multitest.multipletests(p, method="fdr_bh")[1], abs=1e-15)
        assert benjamini_hochberg(p) == pytest.approx(stats.false_discovery_control(p, method="bh"), abs=1e-15)


def test_corrections_leave_nan_and_adjust_over_the_rest():
    p = np.array([0.01, np.nan, 0.04, 0.03, np.nan])
    h, bh = holm(p), benjamini_hochberg(p)
    assert np.isnan(h[[1, 4]]).all() and np.isnan(bh[[1, 4]]).all()
    assert h[[0, 2, 3]] == pytest.approx([0.03, 0.06, 0.06])
    assert bh[[0, 2, 3]] == pytest.approx(stats.false_discovery_control(p[[0, 2, 3]]))
    assert np.isnan(holm([np.nan, np.nan])).all()
    assert holm([]).shape == (0,) and benjamini_hochberg([]).shape == (0,)
    with pytest.raises(ValueError):
        holm([0.1, 1.5])


# ---------------------------------------------------------------------------------------------
# wilcoxon_signed_rank
# ---------------------------------------------------------------------------------------------


def _pratt_exact_p(d):
    """Two-sided p of the signed-rank sum by enumerating all sign flips, zeros ranked then dropped (Pratt)."""
    d = np.asarray(d, float)
    r = stats.rankdata(np.abs(d))
    nonzero = np.flatnonzero(d != 0)
    observed = r[d > 0].sum()
    sums = np.array(
        [
            sum(r[i] for i, s in zip(nonzero, signs, strict=True) if s)
            for signs in itertools.product([0, 1], repeat=nonzero.size)
        ]
    )
    return min(1.0, 2 * min(np.mean(sums >= observed - 1e-9), np.mean(sums <= observed + 1e-9)))


def test_wilcoxon_floors_with_five_and_six_tasks():
    y = np.zeros(5)
    assert wilcoxon_signed_rank(np.arange(1, 6) / 100, y).pvalue == pytest.approx(2 / 2**5)  # 0.0625
    assert wilcoxon_signed_rank(y, np.arange(1, 6) / 100).pvalue == pytest.approx(0.0625)
    assert wilcoxon_signed_rank(np.arange(1, 7) / 100, np.zeros(6)).pvalue == pytest.approx(2 / 2**6)  # 0.03125


def test_wilcoxon_keeps_zero_differences_pratt():
    steps = np.array([0, 0, 1, 2, 3, -4, 5, 6, 7])  # differences in units of 0.001
    y = np.linspace(0.6, 0.9, steps.size)
    x = y + steps / 1000  # not exact in binary: the rounding has work to do
    r = wilcoxon_signed_rank(x, y)
    assert (r.n, r.n_zero) == (9, 2)
    assert (r.wins, r.ties, r.losses) == (6, 2, 1)
    assert r.pvalue == pytest.approx(_pratt_exact_p(steps))
    dropped = stats.wilcoxon(steps, zero_method="wilcox").pvalue
    assert r.pvalue != pytest.approx(dropped)


def test_wilcoxon_rounding_makes_float_noise_into_zeros_and_ties():
    # 0.1 + 0.2 != 0.3 in binary, and 0.8 - 0.7 != 0.3 - 0.2; at 6 decimals they are equal
    x = np.array([0.1 + 0.2, 0.8, 0.3, 0.55, 0.9, 0.42])
    y = np.array([0.3, 0.7, 0.2, 0.5, 0.7, 0.45])
    assert x[0] - y[0] != 0 and (x[1] - y[1]) != (x[2] - y[2])
    r = wilcoxon_signed_rank(x, y)
    exact = np.array([0, 100, 100, 50, 200, -30])  # the same differences in units of 0.001
    assert r.n_zero == 1 and r.n == 6
    assert r.pvalue == pytest.approx(_pratt_exact_p(exact))
    assert r.statistic == pytest.approx(stats.wilcoxon(exact, zero_method="pratt").statistic)


def test_wilcoxon_normal_approximation_with_zeros_and_ties_by_hand():
    """19 tasks with zeros and ties: Cureton's normal approximation for Pratt's ranks, computed by hand."""
    steps = np.array([0, 0, 3, 3, 3, -1, 5, 7, 7, -2, 8, 9, 10, -11, 12, 13, 13, 14, 15])
    y = np.full(19, 0.5)
    r = wilcoxon_signed_rank(y + steps / 1000, y)
    ranks = stats.rankdata(np.abs(steps))
    n, z0 = 19, 2
    mean = (n * (n + 1) - z0 * (z0 + 1)) / 4
    _, t = np.unique(np.abs(steps[steps != 0]), return_counts=True)
    var = (n * (n + 1) * (2 * n + 1) - z0 * (z0 + 1) * (2 * z0 + 1)) / 24 - np.sum(t**3 - t) / 48
    z = (ranks[steps > 0].sum() - mean) / math.sqrt(var)
    assert r.pvalue == pytest.approx(2 * stats.norm.sf(abs(z)), rel=1e-9)
    assert r.statistic == min(ranks[steps > 0].sum(), ranks[steps < 0].sum())


def test_wilcoxon_degenerate_cases(no_warnings):
    same = wilcoxon_signed_rank([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])
    assert same.pvalue == 1.0 and (same.n, same.n_zero, same.ties) == (3, 3, 3)
    one = wilcoxon_signed_rank([0.9], [0.5])
    assert one.n == 1 and one.wins == 1 and math.isnan(one.pvalue) and math.isnan(one.statistic)
    with_nan = wilcoxon_signed_rank([0.9, np.nan, 0.7, 0.8, 0.75, 0.72], [0.5, 0.6, 0.6, 0.6, 0.6, 0.6])
    assert with_nan.n == 5 and with_nan.pvalue == pytest.approx(0.0625)
    with pytest.raises(ValueError, match="len"):
        wilcoxon_signed_rank([0.1, 0.2], [0.1])


# ---------------------------------------------------------------------------------------------
# friedman
# ---------------------------------------------------------------------------------------------

# Demšar 2006, Table 6: AUC of C4.5, C4.5+m, C4.5+cf, C4.5+m+cf on 14 data sets
DEMSAR_AUC = np.array(
    [
        [0.763, 0.768, 0.771, 0.798],
        [0.599, 0.591, 0.590, 0.569],
        [0.954, 0.971, 0.968, 0.967],
        [0.628, 0.661, 0.654, 0.657],
        [0.882, 0.888, 0.886, 0.898],
        [0.936, 0.931, 0.916, 0.931],
        [0.661, 0.668, 0.609, 0.685],
        [0.583, 0.583, 0.563, 0.625],
        [0.775, 0.838, 0.866, 0.875],
        [1.000, 1.000, 1.000, 1.000],
        [0.940, 0.962, 0.965, 0.962],
        [0.619, 0.666, 0.614, 0.669],
        [0.972, 0.981, 0.975, 0.975],
        [0.957, 0.978, 0.946, 0.970],
    ]
)


def test_friedman_by_hand():
    # ranks per block (rank 1 = best); scores are minus the ranks, so higher is better
    ranks = np.array([[1, 2, 3], [1, 3, 2], [1, 2, 3], [2, 1, 3]], dtype=float)
    r = friedman(0.9 - ranks / 100)
    assert r.avg_ranks == pytest.approx([1.25, 2.0, 2.75])
    # chi2 = 12N/(k(k+1)) [sum R^2 - k(k+1)^2/4] = 4 * (13.125 - 12) = 4.5; chi2(2) tail is exp(-x/2)
    assert r.chi2 == pytest.approx(4.5)
    assert r.p_chi2 == pytest.approx(math.exp(-2.25))
    # F = (N-1) chi2 / (N(k-1) - chi2) = 13.5 / 3.5; an F(2, v) tail is (1 + 2F/v)^(-v/2)
    assert r.iman_davenport_f == pytest.approx(27 / 7)
    assert r.p_f == pytest.approx((1 + 2 * (27 / 7) / 6) ** -3)
    assert (r.n_blocks, r.k) == (4, 3)


def test_friedman_matches_scipy_with_ties():
    rng = np.random.default_rng(5)
    M = rng.integers(0, 6, size=(19, 5)).astype(float)  # plenty of ties within blocks
    r = friedman(M)
    ref = stats.friedmanchisquare(*M.T)
    assert r.chi2 == pytest.approx(ref.statistic, rel=1e-12)
    assert r.p_chi2 == pytest.approx(ref.pvalue, rel=1e-10)
    assert r.avg_ranks.sum() == pytest.approx(19 * 15 / 19)  # ranks 1..5 sum to 15 in every block


def test_nemenyi_q_matches_demsar_table_5a():
    # Demšar 2006 Table 5(a): q_0.05 and q_0.10 for k = 2..10 (three decimals)
    q05 = [1.960, 2.343, 2.569, 2.728, 2.850, 2.949, 3.031, 3.102, 3.164]
    q10 = [1.645, 2.052, 2.291, 2.459, 2.589, 2.693, 2.780, 2.855, 2.920]
    for k, a, b in zip(range(2, 11), q05, q10, strict=True):
        scale = math.sqrt(k * (k + 1) / (6 * 10))
        assert nemenyi_cd(k, 10, 0.05) / scale == pytest.approx(a, abs=1.5e-3)
        assert nemenyi_cd(k, 10, 0.10) / scale == pytest.approx(b, abs=1.5e-3)


def test_friedman_on_demsar_example():
    """Demšar §3.2.4: CD = 1.25 at 0.05 (no pair differs) and 1.12 at 0.10 (C4.5 is worse than +m and +m+cf)."""
    r05 = friedman(DEMSAR_AUC, alpha=0.05)
    assert r05.cd == pytest.approx(1.25, abs=5e-3)
    assert r05.avg_ranks[[0, 1]] == pytest.approx([3.143, 2.000], abs=1e-3)  # as printed in the paper
    gaps = np.abs(r05.avg_ranks[:, None] - r05.avg_ranks[None, :])
    assert not (gaps > r05.cd).any()
    r10 = friedman(DEMSAR_AUC, alpha=0.10)
    assert r10.cd == pytest.approx(1.12, abs=5e-3)
    assert {(int(i), int(j)) for i, j in np.argwhere(np.triu(gaps > r10.cd))} == {(0, 1), (0, 3)}
    assert r10.p_f < 0.05  # Demšar: the Iman-Davenport test rejects at 0.05


def test_cd_and_ranks_match_autorank():
    autorank = pytest.importorskip("autorank")
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(11)
    M = rng.normal(0.75, 0.05, size=(19, 5)) + np.array([0.0, 0.01, 0.02, 0.0, 0.03])
    names = list("abcde")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ar = autorank.autorank(pd.DataFrame(M, columns=names), alpha=0.05, verbose=False, force_mode="nonparametric")
    r = friedman(M)
    assert r.cd == pytest.approx(ar.cd, rel=2e-5)  # autorank interpolates statsmodels' q table (qsturng)
    assert r.cd == pytest.approx(1.3993, abs=1e-4)  # the note's figure for k=5, N=19
    assert r.avg_ranks == pytest.approx(ar.rankdf.meanrank.reindex(names).to_numpy(), rel=1e-12)
    assert r.p_chi2 == pytest.approx(ar.pvalue, rel=1e-9)


def test_cd_agrees_with_scikit_posthocs_nemenyi():
    sp = pytest.importorskip("scikit_posthocs")
    rng = np.random.default_rng(2)
    M = rng.normal(size=(19, 5)) + np.arange(5) * 0.8
    r = friedman(M)
    p = sp.posthoc_nemenyi_friedman(M).to_numpy()
    gaps = np.abs(r.avg_ranks[:, None] - r.avg_ranks[None, :])
    assert (p < 0.05).any() and not (p < 0.05).all()  # the check can tell the two apart
    assert ((p < 0.05) == (gaps > r.cd)).all()


def test_friedman_degenerate_matrices(no_warnings):
    flat = friedman(np.full((19, 5), 0.7))
    assert (flat.chi2, flat.p_chi2, flat.iman_davenport_f, flat.p_f) == (0.0, 1.0, 0.0, 1.0)
    assert flat.avg_ranks == pytest.approx([3.0] * 5)
    ordered = friedman(np.tile([0.9, 0.8, 0.7, 0.6], (6, 1)))
    assert ordered.chi2 == pytest.approx(6 * 3)  # the maximum, N(k-1)
    assert ordered.iman_davenport_f == math.inf and ordered.p_f == 0.0
    assert ordered.avg_ranks == pytest.approx([1, 2, 3, 4])


def test_friedman_treats_float_noise_as_a_tie():
    seeds = np.array([0.1, 0.2, 0.3])
    same = [seeds.mean(), seeds[::-1].mean(), seeds.mean()]
    assert same[0] != same[1]  # the same three numbers, summed in another order
    M = np.column_stack([np.full(6, v) for v in same] + [np.full(6, 0.1)])
    assert friedman(M).avg_ranks == pytest.approx([2, 2, 2, 4])
    assert friedman(M, decimals=None).avg_ranks != pytest.approx([2, 2, 2, 4])


def test_friedman_with_two_methods_gives_ranks_and_cd_only():
    r = friedman(np.array([[0.9, 0.8], [0.7, 0.75], [0.6, 0.5]]))
    assert math.isnan(r.chi2) and math.isnan(r.p_chi2) and math.isnan(r.iman_davenport_f) and math.isnan(r.p_f)
    assert r.avg_ranks == pytest.approx([4 / 3, 5 / 3])
    assert r.cd == pytest.approx(1.960 * math.sqrt(2 * 3 / (6 * 3)), abs=1e-3)


def test_friedman_rejects_bad_input():
    with pytest.raises(ValueError, match="block 1, method 2"):
        friedman(np.array([[0.1, 0.2, 0.3], [0.1, 0.2, np.nan]]))
    with pytest.raises(ValueError):
        friedman(np.ones((5, 1)))
    with pytest.raises(ValueError):
        friedman(np.ones((1, 5)))


# ---------------------------------------------------------------------------------------------
# two-level bootstrap
# ---------------------------------------------------------------------------------------------

VTAB_GROUPS = np.array(["natural"] * 7 + ["specialized"] * 4 + ["structured"] * 8)


def _scores(m=3, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.3, 0.95, size=(1, 19, 1))
    return np.clip(base + rng.normal(0, 0.01, size=(m, 19, 5)) + np.arange(m).reshape(m, 1, 1) * 0.004, 0, 1)


def test_bootstrap_is_fast_and_deterministic():
    S = _scores()
    start = time.perf_counter()
    draws = two_level_bootstrap(S, VTAB_GROUPS, n_boot=10_000)
    elapsed = time.perf_counter() - start
    assert draws.shape == (10_000, 3)
    assert elapsed < 2.0
    assert np.array_equal(draws, two_level_bootstrap(S, VTAB_GROUPS, n_boot=10_000))
    assert not np.array_equal(draws, two_level_bootstrap(S, VTAB_GROUPS, n_boot=10_000, seed=1))


def test_bootstrap_pairing_constant_offset():
    S = _scores(2)
    S[1] = S[0] + 0.01
    for resample in (True, False):
        s = bootstrap_summary(S, VTAB_GROUPS, reference_index=0, n_boot=2000, resample_datasets=resample)
        assert s.diff[1] == pytest.approx(0.01, abs=1e-12)
        assert (s.diff_low[1], s.diff_high[1]) == pytest.approx((0.01, 0.01), abs=1e-12)
        assert (s.diff[0], s.diff_low[0], s.diff_high[0]) == (0.0, 0.0, 0.0)
        # the marginal intervals are wide; only the paired difference is exact
        assert s.high[0] - s.low[0] > 0.002
    wide = bootstrap_summary(S, VTAB_GROUPS, 0, n_boot=2000, resample_datasets=True)
    assert wide.high[0] - wide.low[0] > 0.05  # dataset resampling: between-task spread dominates


def test_bootstrap_point_estimate_is_mean_of_group_means():
    pd = pytest.importorskip("pandas")
    S = _scores()
    s = bootstrap_summary(S, VTAB_GROUPS, reference_index=1, n_boot=500)
    for i in range(3):
        per_task = pd.Series(S[i].mean(axis=1))
        assert s.estimate[i] == pytest.approx(per_task.groupby(VTAB_GROUPS).mean().mean(), rel=1e-14)
    plain = bootstrap_summary(S, None, reference_index=1, n_boot=500)
    assert plain.estimate == pytest.approx(S.mean(axis=(1, 2)))
    assert plain.estimate[0] != pytest.approx(s.estimate[0])  # the groups do weigh tasks differently
    assert s.diff == pytest.approx(s.estimate - s.estimate[1])
    assert isinstance(s, BootstrapSummary) and s.reference_index == 1
    assert (s.low < s.estimate).all() and (s.estimate < s.high).all()


def test_datasets_are_resampled_within_groups_only():
    # every task of a group has the same score and seeds do not vary: within-group resampling cannot
    # move the mean of group means, resampling across groups would
    value = {"natural": 0.9, "specialized": 0.5, "structured": 0.2}
    S = np.array([value[g] for g in VTAB_GROUPS])[None, :, None].repeat(5, axis=2)
    draws = two_level_bootstrap(S, VTAB_GROUPS, n_boot=300, resample_datasets=True)
    assert draws == pytest.approx(np.full((300, 1), np.mean(list(value.values()))), abs=1e-14)
    assert np.ptp(two_level_bootstrap(S, None, n_boot=300, resample_datasets=True)) > 0.05


def test_bootstrap_variance_matches_theory():
    """The bootstrap variance of a weighted mean is known in closed form; check both variants against it."""
    rng = np.random.default_rng(4)
    S = rng.normal(0.7, 0.05, size=(1, 19, 5)) + rng.normal(0, 0.1, size=(1, 19, 1))
    w = np.array([1 / (3 * np.sum(g == VTAB_GROUPS)) for g in VTAB_GROUPS])
    seed_var = S[0].var(axis=1) / 5  # plug-in (ddof=0) variance of a mean of 5 resampled seeds
    seed_only = two_level_bootstrap(S, VTAB_GROUPS, n_boot=20_000, resample_datasets=False)[:, 0]
    assert seed_only.var() == pytest.approx(np.sum(w**2 * seed_var), rel=0.05)
    assert seed_only.mean() == pytest.approx(np.sum(w * S[0].mean(axis=1)), abs=3e-4)
    # datasets too: a draw of a slot is a random task of its group plus its seed noise
    expected = 0.0
    for g in np.unique(VTAB_GROUPS):
        idx = g == VTAB_GROUPS
        per_slot = S[0, idx].mean(axis=1).var() + seed_var[idx].mean()
        expected += per_slot / idx.sum() / 9
    both = two_level_bootstrap(S, VTAB_GROUPS, n_boot=20_000, resample_datasets=True)[:, 0]
    assert both.var() == pytest.approx(expected, rel=0.05)


def test_single_seed_fixed_datasets_gives_no_spread():
    S = _scores()[:, :, :1]
    draws = two_level_bootstrap(S, VTAB_GROUPS, n_boot=200, resample_datasets=False)
    estimate = bootstrap_summary(S, VTAB_GROUPS, 0, n_boot=10).estimate
    assert draws == pytest.approx(np.tile(estimate, (200, 1)), abs=1e-14)


def test_bootstrap_rejects_incomplete_scores():
    S = _scores()
    S[2, 4, 3] = np.nan
    with pytest.raises(ValueError, match=r"method 2 on dataset 4 \(1 of 5 seeds missing\)"):
        two_level_bootstrap(S, VTAB_GROUPS, n_boot=10)
    with pytest.raises(ValueError, match="'dtl' on dataset 'dmlab'"):
        bootstrap_summary(
            S,
            VTAB_GROUPS,
            0,
            n_boot=10,
            method_names=["karst", "lora", "dtl"],
            dataset_names=[f"t{i}" for i in range(4)] + ["dmlab"] + ["x"] * 14,
        )
    with pytest.raises(ValueError, match="one label per dataset"):
        two_level_bootstrap(_scores(), VTAB_GROUPS[:-1], n_boot=10)


def test_percentile_interval_by_hand():
    draws = np.arange(101.0)  # percentiles of 0..100 are the percent values themselves
    assert percentile_interval(draws, 0.9) == pytest.approx([5.0, 95.0])
    low, high = percentile_interval(np.column_stack([draws, 2 * draws]))
    assert low == pytest.approx([2.5, 5.0]) and high == pytest.approx([97.5, 195.0])


def _three_tasks(seed=0, n=3):
    """Three tasks far apart in accuracy, 3 methods, n seeds: the realmini shape."""
    rng = np.random.default_rng(seed)
    base = np.array([0.80, 0.89, 0.85])[None, :, None]
    return base + np.array([0.0, -0.02, -0.025])[:, None, None] + rng.normal(0, 0.008, size=(3, 3, n))


def test_default_interval_keeps_tasks_fixed_and_task_resampling_spans_the_task_means():
    S = _three_tasks()
    fixed = bootstrap_summary(S, None, 0)
    assert fixed.resample_datasets is False
    tasks = bootstrap_summary(S, None, 0, resample_datasets=True)
    task_means = S[0].mean(axis=1)
    # resampling 3 tasks: 10 distinct resamples, an interval about [min, max] of the task means
    assert tasks.low[0] == pytest.approx(task_means.min(), abs=0.01)
    assert tasks.high[0] == pytest.approx(task_means.max(), abs=0.01)
    # tasks fixed: only the seed noise of a mean of 9 runs, sd ~ 0.008/3
    assert fixed.high[0] - fixed.low[0] < 0.015 < tasks.high[0] - tasks.low[0]


def test_seed_only_bootstrap_matches_scipy_multi_sample_bootstrap():
    """scipy.stats.bootstrap resamples each sample (here: each task's seeds) independently: the same
    stratified bootstrap, with its own random stream; the bounds agree within Monte Carlo error."""
    S = _three_tasks(seed=3, n=5)

    def mean_of_task_means(*tasks, axis):
        return np.mean([t.mean(axis=axis) for t in tasks], axis=0)

    ours = bootstrap_summary(S, None, 0, n_boot=40_000)
    for i in (0, 2):
        ref = stats.bootstrap(tuple(S[i]), mean_of_task_means, n_resamples=40_000, method="percentile", rng=1)
        assert (ours.low[i], ours.high[i]) == pytest.approx(
            (ref.confidence_interval.low, ref.confidence_interval.high), abs=4e-4
        )
    # the paired difference: resampling seed-matched differences per task
    diffs = tuple(S[2] - S[0])
    ref = stats.bootstrap(diffs, mean_of_task_means, n_resamples=40_000, method="percentile", rng=2)
    assert (ours.diff_low[2], ours.diff_high[2]) == pytest.approx(
        (ref.confidence_interval.low, ref.confidence_interval.high), abs=4e-4
    )


def _edge_case():
    """Scores whose difference's upper bound sits at 0 for bootstrap seed 0 with 10,000 draws."""
    S = _three_tasks(seed=5)
    plain = two_level_bootstrap(S, None, n_boot=10_000, seed=0)
    upper = np.percentile(plain[:, 1] - plain[:, 0], 97.5)
    S[1] -= upper  # shifts method 1 so that the bound is exactly 0 at seed 0
    return S


def test_no_printed_bound_changes_sign_with_the_bootstrap_seed():
    from reports.render import bound

    S = _edge_case()
    naive = set()
    printed = []
    for seed in range(8):
        plain = two_level_bootstrap(S, None, n_boot=10_000, seed=seed)
        naive.add(bool(np.percentile(plain[:, 1] - plain[:, 0], 97.5) > 0))
        s = bootstrap_summary(S, None, 0, seed=seed)
        printed.append(bound(s.diff_high[1], s.diff_unsettled[1, 1]))
        assert s.n_boot > 10_000  # the bound's band straddled 0, so more draws were taken
        for i in (1, 2):
            for j, b in enumerate((s.diff_low[i], s.diff_high[i])):
                text = bound(b, s.diff_unsettled[i, j])
                assert text == "≈0" or np.sign(float(text.replace("\u2212", "-"))) in (np.sign(b), 0)
    assert naive == {True, False}  # a fixed 10,000 draws does flip the sign of this bound
    signs = {t[0] for t in printed if t not in ("≈0", "0.00")}
    assert len(signs) <= 1, printed  # printed: one sign, or "≈0" (within Monte Carlo error)


def test_monte_carlo_error_matches_the_spread_over_bootstrap_seeds():
    S = _three_tasks(seed=7, n=5)
    runs = [bootstrap_summary(S, None, 0, n_boot=10_000, seed=k, max_boot=10_000) for k in range(12)]
    spread = np.std([r.low[0] for r in runs], ddof=1)
    reported = np.mean([r.mc_se for r in runs])
    assert spread < 2.5 * reported and reported < 5 * spread  # the same order of magnitude


def test_iqm_matches_rliable_and_a_hand_computation():
    metrics = pytest.importorskip("rliable.metrics")
    rng = np.random.default_rng(13)
    S = rng.uniform(0.5, 0.9, size=(2, 4, 5))  # 20 runs per method: IQM drops 5 on each side
    for m in range(2):
        ordered = np.sort(S[m].ravel())
        assert iqm(S[m]) == pytest.approx(ordered[5:15].mean(), rel=1e-12)
        assert iqm(S[m]) == pytest.approx(metrics.aggregate_iqm(S[m].T), rel=1e-12)  # rliable: runs × tasks
    q = iqm_summary(S, n_boot=4000)
    assert q.estimate == pytest.approx([iqm(S[0]), iqm(S[1])])
    # independent loop bootstrap (own RNG) of the same stratified scheme
    loop_rng = np.random.default_rng(99)
    draws = []
    for _ in range(4000):
        idx = loop_rng.integers(0, 5, size=(4, 5))
        draws.append(iqm(np.take_along_axis(S[0], idx, axis=1)))
    lo, hi = np.percentile(draws, [2.5, 97.5])
    assert (q.low[0], q.high[0]) == pytest.approx((lo, hi), abs=0.012)  # MC error of 4,000 draws


def test_probability_of_improvement_matches_rliable_and_a_loop_bootstrap():
    metrics = pytest.importorskip("rliable.metrics")
    rng = np.random.default_rng(21)
    X = rng.normal(0.71, 0.01, size=(4, 5)) + np.arange(4)[:, None] * 0.05
    Y = rng.normal(0.70, 0.01, size=(4, 6)) + np.arange(4)[:, None] * 0.05
    r = probability_of_improvement(X, Y, n_boot=4000)
    assert r.estimate == pytest.approx(metrics.probability_of_improvement(X.T, Y.T), rel=1e-12)
    per_task = [stats.mannwhitneyu(X[d], Y[d]).statistic / 30 for d in range(4)]
    assert r.estimate == pytest.approx(np.mean(per_task))
    loop_rng = np.random.default_rng(5)
    draws = []
    for _ in range(3000):
        xs = [X[d, loop_rng.integers(0, 5, 5)] for d in range(4)]
        ys = [Y[d, loop_rng.integers(0, 6, 6)] for d in range(4)]
        draws.append(np.mean([prob_superiority(a, b) for a, b in zip(xs, ys, strict=True)]))
    lo, hi = np.percentile(draws, [2.5, 97.5])
    assert (r.low, r.high) == pytest.approx((lo, hi), abs=0.03)
    assert r.low < r.estimate < r.high and r.n_tasks == 4
    same = probability_of_improvement(X, X.copy(), n_boot=2000)
    assert same.estimate == 0.5 and same.unsettled == (False, False)  # the interval straddles ½ by far
    assert same.low < 0.5 < same.high


def test_performance_profile_by_hand():
    S = np.array([[[0.1, 0.5], [0.7, 0.9]]])  # one method, 4 runs
    prof, low, high = performance_profile(S, [0.0, 0.5, 0.8, 1.0], n_boot=200)
    assert prof[0] == pytest.approx([1.0, 0.5, 0.25, 0.0])  # strictly above τ
    assert (low <= prof + 1e-12).all() and (prof <= high + 1e-12).all()


def test_binomial_se_matches_statsmodels_normal_interval():
    proportion = pytest.importorskip("statsmodels.stats.proportion")
    for acc, n in ((0.75, 10_000), (0.5, 200), (0.93, 1000)):
        low, high = proportion.proportion_confint(round(acc * n), n, alpha=0.05, method="normal")
        assert binomial_se(acc, n) == pytest.approx((high - low) / (2 * stats.norm.ppf(0.975)), rel=1e-9)
    assert binomial_se(0.75, 10_000) == pytest.approx(0.00433, abs=1e-5)  # about 0.43 pp
    assert math.isnan(binomial_se(0.7, float("nan"))) and math.isnan(binomial_se(0.7, 0))


# ---------------------------------------------------------------------------------------------
# few_shot_difference
# ---------------------------------------------------------------------------------------------


def test_few_shot_constant_shift_and_average_prob_superiority():
    rng = np.random.default_rng(8)
    b = rng.uniform(0.2, 0.6, size=(5, 5))
    a = b + 0.02
    r = few_shot_difference(a, b, n_boot=2000)
    assert r.diff == pytest.approx(0.02) and (r.low, r.high) == pytest.approx((0.02, 0.02), abs=1e-12)
    expected = np.mean([stats.mannwhitneyu(a[d], b[d]).statistic / 25 for d in range(5)])
    assert r.prob_superiority == pytest.approx(expected)
    assert (r.n_datasets, r.n_seeds) == (5, 5)


def test_few_shot_interval_width_and_determinism():
    rng = np.random.default_rng(9)
    a = rng.normal(0.55, 0.02, size=(5, 5)) + np.arange(5)[:, None] * 0.05
    b = rng.normal(0.54, 0.02, size=(5, 5)) + np.arange(5)[:, None] * 0.05
    r = few_shot_difference(a, b)
    # seed-only bootstrap of a mean of 5 dataset means: variance sum_d var0(a_d - b_d) / n / D^2
    sd = math.sqrt(np.sum((a - b).var(axis=1) / 5) / 25)
    assert r.high - r.low == pytest.approx(2 * 1.96 * sd, rel=0.1)
    assert r.low < r.diff < r.high
    assert few_shot_difference(a, b) == r
    assert few_shot_difference(a, b, seed=3) != r
    with pytest.raises(ValueError, match="shape"):
        few_shot_difference(a, b[:4])
    a[2, 1] = np.nan
    with pytest.raises(ValueError, match="method 'a' on dataset 2"):
        few_shot_difference(a, b)


# ---------------------------------------------------------------------------------------------
# mark_best
# ---------------------------------------------------------------------------------------------


def test_mark_best_ties_at_displayed_precision():
    assert mark_best([0.8512, 0.8508, 0.84], 3) == ["best", "best", "second"]
    assert mark_best([0.8512, 0.8508, 0.84], 4) == ["best", "second", ""]
    # percent with one decimal: 85.04 and 84.96 both print as 85.0
    assert mark_best([85.04, 84.96, 84.2, 84.24, 70.0], 1) == ["best", "best", "second", "second", ""]


def test_mark_best_lower_is_better_nan_and_all_equal():
    assert mark_best([3.0, 1.0, 2.0, np.nan], 1, higher_is_better=False) == ["", "best", "second", ""]
    assert mark_best([np.nan, 0.5], 2) == ["", "best"]
    assert mark_best([0.5, 0.5, 0.5], 2) == ["best", "best", "best"]
    assert mark_best([np.nan, np.nan], 1) == ["", ""]


def test_mark_best_agrees_with_the_printed_strings():
    rng = np.random.default_rng(12)
    for _ in range(50):
        values = np.round(rng.uniform(80, 82, 6), 2) + rng.choice([0.0, 0.005, -0.005], 6)
        printed = [f"{v:.1f}" for v in values]
        marks = mark_best(values, 1)
        best = max(printed, key=float)
        assert all((m == "best") == (p == best) for m, p in zip(marks, printed, strict=True))
        rest = [p for p in printed if p != best]
        if rest:
            second = max(rest, key=float)
            assert all((m == "second") == (p == second) for m, p in zip(marks, printed, strict=True))
