"""reports.stats against independent computations: hand calculations, published tables, statsmodels,
scikit-posthocs and autorank (the last three only as cross-checks; they are skipped when absent)."""

from __future__ import annotations

import itertools
import math
import statistics
import warnings

import numpy as np
import pytest
from scipy import stats

from reports.stats import (
    AggregateSummary,
    aggregate_summary,
    benjamini_hochberg,
    binomial_se,
    compare_seeds,
    few_shot_difference,
    fixed_task_difference,
    fixed_task_mean,
    friedman,
    holm,
    improvement_interval,
    iqm,
    iqm_interval,
    mark_best,
    nemenyi_cd,
    performance_profile,
    prob_superiority,
    random_task_mean,
    t_interval,
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
    assert paired or r.low <= 0.0 <= r.high  # paired: constant (zero) differences, no interval


def test_welch_identical_method_gives_symmetric_ci():
    r = compare_seeds(A, A.copy())
    assert r.low == pytest.approx(-r.high) and r.high > 0


def test_zero_variance_samples_give_no_test_and_no_interval(no_warnings):
    """Identical seeds do not show that a method has no seed variance: a p of 0 with a zero-width
    interval would claim certainty (and would count as a discovery in the BH family)."""
    same = compare_seeds([0.8] * 5, [0.8] * 5)
    assert same.diff == 0.0 and same.pvalue == 1.0 and np.isnan([same.low, same.high]).all()
    apart = compare_seeds([0.8] * 2, [0.75] * 2)
    assert apart.diff == pytest.approx(0.05) and np.isnan([apart.low, apart.high, apart.pvalue]).all()
    assert apart.prob_superiority == 1.0


def test_a_constant_cell_does_not_change_the_other_cells_bh_q(no_warnings):
    rng = np.random.default_rng(3)
    p = [compare_seeds(rng.normal(0.7 + 0.01 * k, 0.01, 3), rng.normal(0.7, 0.01, 3)).pvalue for k in range(4)]
    constant = compare_seeds([0.8, 0.8], [0.75, 0.75]).pvalue  # two constant samples
    with_it = benjamini_hochberg([*p, constant])
    assert np.isnan(with_it[-1])
    assert with_it[:-1] == pytest.approx(benjamini_hochberg(p), rel=1e-12)


def test_paired_constant_shift_gives_no_test(no_warnings):
    b = np.array([0.61, 0.67, 0.70, 0.64, 0.66])
    r = compare_seeds(b + 0.01, b, paired=True)  # differences equal up to rounding noise
    assert np.isnan(r.pvalue) and np.isnan(r.low) and r.diff == pytest.approx(0.01)
    # Welch on the same data sees two spread-out samples
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
# intervals across tasks
# ---------------------------------------------------------------------------------------------

VTAB_GROUPS = np.array(["natural"] * 7 + ["specialized"] * 4 + ["structured"] * 8)


def _scores(m=3, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.3, 0.95, size=(1, 19, 1))
    return np.clip(base + rng.normal(0, 0.01, size=(m, 19, 5)) + np.arange(m).reshape(m, 1, 1) * 0.004, 0, 1)


def test_fixed_task_mean_by_hand_and_against_welch_on_two_tasks():
    S = _scores()[0]
    r = fixed_task_mean(S)
    v = S.var(axis=1, ddof=1) / 5 / 19**2
    df = v.sum() ** 2 / np.sum(v**2 / 4)
    half = stats.t.ppf(0.975, df) * math.sqrt(v.sum())
    assert r.estimate == pytest.approx(S.mean()) and r.df == pytest.approx(df)
    assert (r.low, r.high) == pytest.approx((S.mean() - half, S.mean() + half), rel=1e-12)
    # the difference over one task with equal weights is exactly Welch's interval (scipy)
    a, b = S[:1], _scores(seed=1)[0, :1]
    d = fixed_task_difference(a, b)
    welch = stats.ttest_ind(a[0], b[0], equal_var=False).confidence_interval(0.95)
    assert (d.low, d.high) == pytest.approx((welch.low, welch.high), rel=1e-10)


def test_aggregate_summary_weights_groups_and_pairs_nothing_it_should_not():
    pd = pytest.importorskip("pandas")
    S = _scores()
    s = aggregate_summary(S, VTAB_GROUPS, reference_index=1)
    for i in range(3):
        per_task = pd.Series(S[i].mean(axis=1))
        assert s.estimate[i] == pytest.approx(per_task.groupby(VTAB_GROUPS).mean().mean(), rel=1e-14)
    plain = aggregate_summary(S, None, reference_index=1)
    assert plain.estimate == pytest.approx(S.mean(axis=(1, 2)))
    assert s.diff == pytest.approx(s.estimate - s.estimate[1])
    assert (s.diff[1], s.diff_low[1], s.diff_high[1]) == (0.0, 0.0, 0.0)
    assert isinstance(s, AggregateSummary) and s.reference_index == 1
    assert (s.low < s.estimate).all() and (s.estimate < s.high).all()
    w = np.array([1 / (3 * np.sum(g == VTAB_GROUPS)) for g in VTAB_GROUPS])
    direct = fixed_task_difference(S[2], S[1], w)
    assert (s.diff_low[2], s.diff_high[2]) == pytest.approx((float(direct.low), float(direct.high)))


def test_one_seed_or_no_spread_gives_no_aggregate_interval():
    S = _scores()[:, :, :1]
    s = aggregate_summary(S, VTAB_GROUPS, 0)
    assert np.isnan(s.low).all() and np.isnan(s.diff_low[1:]).all()
    flat = np.repeat(_scores()[:, :, :1], 3, axis=2)  # three identical seeds everywhere
    s = aggregate_summary(flat, None, 0)
    assert np.isnan(s.low).all() and np.isnan(s.diff_high[1:]).all()


def test_random_task_mean_is_a_t_interval_over_tasks_within_groups():
    S = _scores()
    M = S.mean(axis=2)
    r = random_task_mean(M[0])
    t = stats.ttest_1samp(M[0], 0.0).confidence_interval(0.95)
    assert (r.low, r.high) == pytest.approx((t.low, t.high), rel=1e-12)
    g = random_task_mean(M[0], VTAB_GROUPS)
    comps = [M[0, k == VTAB_GROUPS].var(ddof=1) / np.sum(k == VTAB_GROUPS) / 9 for k in np.unique(VTAB_GROUPS)]
    df = sum(comps) ** 2 / sum(
        c**2 / (np.sum(k == VTAB_GROUPS) - 1) for c, k in zip(comps, np.unique(VTAB_GROUPS), strict=True)
    )
    assert g.df == pytest.approx(df)
    assert np.isnan(random_task_mean(M[0, :3], np.array(["a", "a", "b"])).low)  # a group of one task


def test_aggregates_reject_incomplete_scores():
    S = _scores()
    S[2, 4, 3] = np.nan
    with pytest.raises(ValueError, match="'dtl' on dataset 'dmlab'"):
        aggregate_summary(
            S,
            VTAB_GROUPS,
            0,
            method_names=["karst", "lora", "dtl"],
            dataset_names=[f"t{i}" for i in range(4)] + ["dmlab"] + ["x"] * 14,
        )
    with pytest.raises(ValueError, match="one label per dataset"):
        aggregate_summary(_scores(), VTAB_GROUPS[:-1], 0)


def test_iqm_trims_exactly_a_quarter_at_each_end():
    """trim_mean (and rliable's aggregate_iqm) cut floor(N/4) whole runs: 1 of 6 (17 %) at 3 tasks × 2
    seeds. The IQM here is the mean of the quantile function over [¼, ¾]: boundary runs count partly."""
    x = np.array([10.0, 0.0, 2.0, 7.0, 1.0, 3.0])
    # [¼, ¾] of 6 equal masses, sorted 0 1 2 3 7 10: 1/12 of 1, 1/6 of 2 and of 3, 1/12 of 7, over ½
    assert iqm(x) == pytest.approx((1 / 12 * 1 + 1 / 6 * 2 + 1 / 6 * 3 + 1 / 12 * 7) / 0.5) == pytest.approx(3.0)
    assert stats.trim_mean(x, 0.25) == pytest.approx(3.25)  # mean of 1, 2, 3, 7: a third of the runs cut
    rng = np.random.default_rng(13)
    S = rng.uniform(0.5, 0.9, size=(2, 4, 5))  # 20 runs: N/4 whole, so it equals trim_mean and rliable
    for m in range(2):
        ordered = np.sort(S[m].ravel())
        assert iqm(S[m]) == pytest.approx(ordered[5:15].mean(), rel=1e-12)
        assert iqm(S[m]) == pytest.approx(stats.trim_mean(S[m].ravel(), 0.25), rel=1e-12)
    # a large sample of a known distribution: the IQM of U(0, 1) is ½, of N(0, 1) is 0
    assert iqm(rng.uniform(0, 1, 200_003)) == pytest.approx(0.5, abs=3e-3)


def test_iqm_interval_uses_the_efron_stein_bound():
    S = _scores()[0]
    r = iqm_interval(S)
    var = S.var(axis=1, ddof=1)
    c = 5 * var
    df = c.sum() ** 2 / np.sum(c**2 / 4)
    half = stats.t.ppf(0.975, df) * 2 / 95 * math.sqrt(c.sum())
    assert r.estimate == pytest.approx(iqm(S)) and (r.high - r.low) == pytest.approx(2 * half)


def test_probability_of_improvement_matches_rliable_and_is_never_degenerate():
    metrics = pytest.importorskip("rliable.metrics")
    rng = np.random.default_rng(21)
    X = rng.normal(0.71, 0.01, size=(4, 5)) + np.arange(4)[:, None] * 0.05
    Y = rng.normal(0.70, 0.01, size=(4, 6)) + np.arange(4)[:, None] * 0.05
    r = improvement_interval(X, Y)
    assert float(r.estimate) == pytest.approx(metrics.probability_of_improvement(X.T, Y.T), rel=1e-12)
    per_task = [stats.mannwhitneyu(X[d], Y[d]).statistic / 30 for d in range(4)]
    assert float(r.estimate) == pytest.approx(np.mean(per_task))
    assert r.low < r.estimate < r.high
    # statsmodels' Wilson interval with N = D·min(n_x, n_y) = 20 at the same estimate
    proportion = pytest.importorskip("statsmodels.stats.proportion")
    low, high = proportion.proportion_confint(float(r.estimate) * 20, 20, method="wilson")
    assert (float(r.low), float(r.high)) == pytest.approx((low, high), rel=1e-9)
    # every run of X beats every run of Y: estimate 1, but never the interval [1, 1]
    top = improvement_interval(X + 1.0, Y)
    assert float(top.estimate) == 1.0 and float(top.low) < 0.9 and float(top.high) == pytest.approx(1.0)
    bottom = improvement_interval(X - 1.0, Y)
    assert float(bottom.high) > 0.1 and float(bottom.low) == pytest.approx(0.0, abs=1e-12)


def test_performance_profile_by_hand():
    S = np.array([[[0.1, 0.5], [0.7, 0.9]]])  # one method, 4 runs
    prof = performance_profile(S, [0.0, 0.5, 0.8, 1.0])
    assert prof[0] == pytest.approx([1.0, 0.5, 0.25, 0.0])  # strictly above τ


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


def test_few_shot_difference_is_the_fixed_task_interval_and_average_prob_superiority():
    rng = np.random.default_rng(9)
    a = rng.normal(0.55, 0.02, size=(5, 5)) + np.arange(5)[:, None] * 0.05
    b = rng.normal(0.54, 0.02, size=(5, 5)) + np.arange(5)[:, None] * 0.05
    r = few_shot_difference(a, b)
    direct = fixed_task_difference(a, b)
    assert (r.diff, r.low, r.high) == pytest.approx((float(direct.estimate), float(direct.low), float(direct.high)))
    expected = np.mean([stats.mannwhitneyu(a[d], b[d]).statistic / 25 for d in range(5)])
    assert r.prob_superiority == pytest.approx(expected)
    assert (r.n_datasets, r.n_seeds) == (5, 5)
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
