"""Statistics of the report against independent computations (scikit-learn, scipy, loops)."""

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from benchmark.evaluation.metrics import weighted_auroc, weighted_average_precision, weighted_f1
from benchmark.reporting.statistics import (
    holm,
    paired_bootstrap_p,
    percentile_interval,
    resamples_for_family,
    subject_draws,
    volume_weights,
)


@pytest.mark.parametrize("seed", range(4))
def test_weighted_metrics_equal_sklearn_with_sample_weights(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 60)
    scores = np.round(rng.random(60) * 0.6 + 0.3 * labels, 1)  # many ties
    weights = rng.integers(0, 4, size=(5, 60)).astype(float)  # bootstrap-like counts, zeros too
    ap = weighted_average_precision(
        torch.tensor(scores), torch.tensor(labels), torch.tensor(weights)
    )
    auroc = weighted_auroc(torch.tensor(scores), torch.tensor(labels), torch.tensor(weights))
    f1 = weighted_f1(torch.tensor(scores), torch.tensor(labels), 0.5, torch.tensor(weights))
    for row, w in enumerate(weights):
        assert ap[row] == pytest.approx(average_precision_score(labels, scores, sample_weight=w))
        assert auroc[row] == pytest.approx(roc_auc_score(labels, scores, sample_weight=w))
        expected_f1 = f1_score(labels, scores >= 0.5, sample_weight=w, zero_division=0)
        assert f1[row] == pytest.approx(expected_f1)


def test_weighted_metrics_are_nan_without_the_needed_classes():
    scores, labels = torch.tensor([0.1, 0.9]), torch.tensor([0, 1])
    assert torch.isnan(weighted_average_precision(scores, labels, torch.tensor([1.0, 0.0])))
    assert torch.isnan(weighted_auroc(scores, labels, torch.tensor([0.0, 2.0])))


def test_volume_weights_count_subject_draws_and_keep_sinuses_together():
    subject_of_volume = np.array([0, 0, 1, 1, 2, 3, 3])  # subject 2 has one sinus
    draws = subject_draws(4, 50, seed=3)
    weights = volume_weights(draws, subject_of_volume)
    for b in range(50):
        direct = [np.sum(draws[b] == subject) for subject in subject_of_volume]
        np.testing.assert_array_equal(weights[b], direct)
    np.testing.assert_array_equal(weights[:, 0], weights[:, 1])
    np.testing.assert_array_equal(weights.sum(1), [
        sum(np.sum(draws[b] == s) * n for s, n in enumerate([2, 2, 1, 2])) for b in range(50)
    ])  # fmt: skip


def test_resampled_auprc_equals_a_loop_over_explicitly_resampled_volumes():
    rng = np.random.default_rng(0)
    subjects = np.repeat(np.arange(15), 2)
    labels, scores = rng.integers(0, 2, 30), rng.random(30)
    labels[:2] = [0, 1]
    draws = subject_draws(15, 40, seed=1)
    fast = weighted_average_precision(
        torch.tensor(scores), torch.tensor(labels), torch.tensor(volume_weights(draws, subjects))
    ).numpy()
    for b in range(40):
        rows = np.concatenate([np.flatnonzero(subjects == s) for s in draws[b]])
        if labels[rows].sum() == 0:
            assert np.isnan(fast[b])
        else:
            assert fast[b] == pytest.approx(average_precision_score(labels[rows], scores[rows]))


def test_percentile_interval_ignores_nan_and_matches_numpy():
    values = np.r_[np.arange(100.0), np.nan]
    assert percentile_interval(values) == pytest.approx(
        tuple(np.percentile(values[:-1], [2.5, 97.5]))
    )
    assert np.isnan(percentile_interval(np.array([np.nan]))[0])


def test_bootstrap_p_value_by_its_definition():
    replicates = np.array([0.1, 0.3, -0.1, 0.2, 0.05])
    # |d_b - 0.1| >= 0.1 for 0.3, -0.1, 0.2 (and 0.1 - 0.1 = 0 is not): 3 of 5
    assert paired_bootstrap_p(0.1, replicates) == pytest.approx((1 + 3) / 6)
    assert paired_bootstrap_p(0.0, np.zeros(99)) == 1.0  # identical methods


def test_holm_on_a_worked_example_and_against_the_step_down_rule():
    p = np.array([0.01, 0.04, 0.03, 0.005, np.nan])
    np.testing.assert_allclose(holm(p)[:4], [0.03, 0.06, 0.06, 0.02])
    assert np.isnan(holm(p)[4])
    rng = np.random.default_rng(0)
    for _ in range(50):
        p = rng.random(7) ** 3
        for alpha in (0.01, 0.05, 0.1):
            order = np.argsort(p)
            rejected = np.zeros(7, dtype=bool)
            for rank, index in enumerate(order):  # Holm 1979: stop at the first acceptance
                if p[index] > alpha / (7 - rank):
                    break
                rejected[index] = True
            np.testing.assert_array_equal(holm(p) <= alpha, rejected)


def test_holm_by_hand_on_three_tests():
    # sorted 0.01, 0.02, 0.04: 3 x 0.01 = 0.03, 2 x 0.02 = 0.04, max(0.04, 1 x 0.04) = 0.04
    np.testing.assert_allclose(holm(np.array([0.04, 0.01, 0.02])), [0.04, 0.03, 0.04])
    # a later smaller product is raised to the running maximum: 3 x 0.02 = 0.06 > 2 x 0.025
    np.testing.assert_allclose(holm(np.array([0.02, 0.025, 0.9])), [0.06, 0.06, 0.9])


@pytest.mark.parametrize("family", [1, 12, 14, 90])
def test_resamples_let_the_smallest_holm_adjusted_bootstrap_p_reach_alpha_over_20(family):
    replicates = resamples_for_family(family, alpha=0.05)
    assert replicates >= 1000
    smallest = holm(np.full(family, 1 / (replicates + 1)))  # every test at its smallest p
    assert smallest.max() <= 0.05 / 20
    assert resamples_for_family(family, alpha=0.05, requested=200) == 200  # --bootstrap wins


def test_a_stored_threshold_of_zero_is_kept_and_only_a_missing_one_becomes_half():
    from benchmark.reporting.summaries import decision_threshold

    assert decision_threshold({"threshold": 0.0}) == 0.0
    assert decision_threshold({"threshold": 0.25}) == 0.25
    assert decision_threshold({"threshold": None}) == 0.5
    assert decision_threshold({}) == 0.5
