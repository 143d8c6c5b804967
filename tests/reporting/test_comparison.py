"""The paired comparison's statistics against independent computations (scipy, hand formulas)."""

import math

import numpy as np
import pytest
from scipy import stats

from benchmark.reporting.comparison import (
    mean_difference,
    minimum_detectable_difference,
    paired_test,
    power_at,
    variance_components,
)

CONSTANT = np.full(500, 0.02)  # bootstrap replicates without test-subject variance


def test_with_seeds_and_no_test_variance_it_is_the_one_sample_t_test_of_the_seed_means():
    differences = np.array([0.05, 0.07, 0.06, 0.01, 0.02, 0.00, 0.09, 0.11, 0.10])
    seeds = np.repeat([0, 1, 2], 3)
    means = np.array([0.06, 0.01, 0.10])
    test = paired_test(differences, seeds, CONSTANT, subjects=60, alpha=0.05)
    assert test.difference == pytest.approx(means.mean())
    assert test.p == pytest.approx(stats.ttest_1samp(means, 0).pvalue)
    low, high = stats.t.interval(0.95, 2, loc=means.mean(), scale=stats.sem(means))
    assert (test.low, test.high) == pytest.approx((low, high))
    assert test.df == pytest.approx(2) and test.components.seeds == 3


def test_with_one_seed_the_cells_get_the_nadeau_bengio_correction():
    differences = np.array([0.04, 0.01, 0.07, 0.03, 0.05])
    test = paired_test(differences, np.zeros(5), CONSTANT, subjects=60, alpha=0.05)
    corrected = math.sqrt((1 / 5 + 1 / 4) * differences.var(ddof=1))  # rho / (1 - rho) = 1/(k-1)
    assert test.standard_error == pytest.approx(corrected)
    assert test.p == pytest.approx(2 * stats.t.sf(differences.mean() / corrected, 4))


def test_training_and_test_variance_add_with_satterthwaite_degrees_of_freedom():
    """The variances add; the df are Satterthwaite's with training at its upper 75 % limit."""
    rng = np.random.default_rng(0)
    differences, seeds = rng.normal(0.03, 0.02, 6), np.repeat([0, 1, 2], 2)
    replicates = rng.normal(0.03, 0.015, 4000)
    components = variance_components(differences, seeds, replicates, subjects=40)
    training = np.array([differences[seeds == s].mean() for s in range(3)]).var(ddof=1) / 3
    test = replicates.var(ddof=1)
    assert components.training == pytest.approx(training)
    assert components.test == pytest.approx(test)
    upper = training * 2 / stats.chi2.ppf(0.25, 2)  # the 75 % upper limit sets the df only
    df = (upper + test) ** 2 / (upper**2 / 2 + test**2 / 39)
    assert components.df == pytest.approx(df)
    result = paired_test(differences, seeds, replicates, subjects=40, alpha=0.05)
    statistic = mean_difference(differences, seeds) / math.sqrt(training + test)
    assert result.p == pytest.approx(2 * stats.t.sf(abs(statistic), df))


def test_unbalanced_seeds_weigh_each_seed_equally():
    differences, seeds = np.array([1.0, 1.0, 1.0, 4.0]), np.array([0, 0, 0, 1])
    assert mean_difference(differences, seeds) == pytest.approx(2.5)
    replicates = np.array([[1.0, 2.0], [3.0, 2.0], [2.0, 2.0], [6.0, 0.0]])  # [cells, B]
    np.testing.assert_allclose(mean_difference(replicates, seeds), [4.0, 1.0])


def test_the_mdd_is_detected_with_80_percent_power_and_matches_the_normal_formula():
    for df in (2.0, 9.0, 50.0):
        mdd = minimum_detectable_difference(0.03, df, alpha=0.05 / 12)
        assert power_at(mdd, 0.03, df, alpha=0.05 / 12) == pytest.approx(0.8, abs=0.01)
    large = minimum_detectable_difference(0.03, 1e7, alpha=0.05)
    assert large == pytest.approx((stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) * 0.03)


def test_identical_methods_give_p_one_and_one_cell_gives_no_test():
    identical = paired_test(np.zeros(6), np.repeat([0, 1], 3), np.zeros(100), 30, 0.05)
    assert identical.p == 1.0 and identical.difference == 0
    single = paired_test(np.array([0.1]), np.array([0]), CONSTANT, 30, 0.05)
    assert single.difference == pytest.approx(0.1)
    assert math.isnan(single.p) and math.isnan(single.mdd) and math.isnan(single.low)
