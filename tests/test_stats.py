"""The statistics of seeds and comparisons (jaxcnn/core/stats.py) against SciPy on fixed inputs."""

import math

import pytest
from scipy import stats as scipy_stats

from jaxcnn.core import stats

SAMPLES = [[0.9812, 0.9797, 0.9820, 0.9789, 0.9805, 0.9811, 0.9799, 0.9818], [0.5, 0.7], [1.0, 2.0, 4.0, 8.0, 16.0]]


@pytest.mark.parametrize("df", [1, 2, 3, 7, 30, 250])
def test_the_student_t_distribution_and_quantiles_match_scipy(df):
    for t in (-40.0, -3.2, -1.0, -0.1, 0.0, 0.4, 1.96, 2.5, 12.0):
        assert stats.t_cdf(t, df) == pytest.approx(scipy_stats.t.cdf(t, df), rel=1e-10, abs=1e-13)
    for p in (0.001, 0.025, 0.2, 0.5, 0.8, 0.975, 0.9995):
        assert stats.t_ppf(p, df) == pytest.approx(scipy_stats.t.ppf(p, df), rel=1e-9, abs=1e-12)


def test_the_regularized_incomplete_beta_matches_scipy():
    from scipy import special

    for a, b, x in ((0.5, 0.5, 0.3), (2.0, 3.0, 0.7), (15.0, 0.5, 0.99), (100.0, 0.5, 0.5), (1.0, 1.0, 0.25)):
        assert stats.betainc(a, b, x) == pytest.approx(special.betainc(a, b, x), rel=1e-10)


@pytest.mark.parametrize("values", SAMPLES)
def test_describe_gives_scipys_mean_std_standard_error_and_t_interval(values):
    described = stats.describe(values)
    n = len(values)
    low, high = scipy_stats.t.interval(0.95, n - 1, loc=sum(values) / n, scale=scipy_stats.sem(values))
    assert described["n"] == n and described["mean"] == pytest.approx(sum(values) / n, rel=1e-12)
    assert described["std"] == pytest.approx(scipy_stats.tstd(values), rel=1e-12)
    assert described["sem"] == pytest.approx(scipy_stats.sem(values), rel=1e-12)
    assert described["ci95"] == pytest.approx([low, high], rel=1e-9)
    assert (described["min"], described["max"]) == (min(values), max(values))


def test_describe_of_one_value_has_no_spread_and_skips_missing_values():
    assert stats.describe([0.5])["std"] is None and stats.describe([0.5])["ci95"] is None
    described = stats.describe([0.5, None, 0.7])
    assert described["n"] == 2 and described["missing"] == 1 and described["mean"] == pytest.approx(0.6)


def test_the_paired_comparison_matches_scipys_paired_t_test():
    a = [0.9812, 0.9797, 0.9820, 0.9789, 0.9805, 0.9811, 0.9799, 0.9818]
    b = [0.9801, 0.9790, 0.9815, 0.9794, 0.9790, 0.9800, 0.9791, 0.9806]
    result, expected = stats.paired(a, b), scipy_stats.ttest_rel(a, b)
    assert result["t"] == pytest.approx(expected.statistic, rel=1e-10)
    assert result["p_value"] == pytest.approx(expected.pvalue, rel=1e-8)
    ci = expected.confidence_interval(0.95)
    assert result["ci95"] == pytest.approx([ci.low, ci.high], rel=1e-9)


@pytest.mark.parametrize("effect, expected", [(0.2, 199), (0.5, 34), (0.8, 15), (1.0, 10), (2.0, 5)])
def test_seeds_needed_is_the_paired_t_tests_sample_size_at_power_80_percent(effect, expected):
    """The published sample sizes of a two-sided paired t-test at level 0.05 and power 0.8 (G*Power)."""
    assert stats.seeds_needed(effect * 0.003, 0.003) == expected


def test_seeds_needed_reaches_the_power_it_promises_by_the_noncentral_t_distribution():
    """Power with n seeds: P(|T| > t[0.975, n-1]) for T noncentral t (n - 1 degrees of freedom,
    noncentrality effect·sqrt(n)); the upper tail, the lower one being negligible here. The
    approximation's n reaches 0.8 within 0.01, and n - 1 seeds fall short."""
    for effect in (0.3, 0.6, 1.5):
        n = stats.seeds_needed(effect, 1.0)
        power = lambda k: scipy_stats.nct.sf(scipy_stats.t.ppf(0.975, k - 1), k - 1, effect * math.sqrt(k))
        assert power(n) >= 0.79 and power(n - 1) < 0.8
    assert stats.seeds_needed(0.0, 1.0) is None
