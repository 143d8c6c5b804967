"""Metrics against scikit-learn, an independent implementation."""

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    average_precision_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from benchmark.evaluation.finetune import class_weights
from benchmark.evaluation.metrics import best_f1_threshold, classification_metrics


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auprc_and_auroc_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.random(200) * 0.5 + labels * 0.3, 2)  # ties included
    metrics = classification_metrics(torch.tensor(scores), torch.tensor(labels), 0.5)
    assert metrics["auprc"] == pytest.approx(average_precision_score(labels, scores), abs=1e-6)
    assert metrics["auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-6)


def test_thresholded_metrics_match_sklearn():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 100)
    scores = rng.random(100)
    metrics = classification_metrics(torch.tensor(scores), torch.tensor(labels), 0.4)
    predicted = scores >= 0.4
    assert metrics["f1"] == pytest.approx(f1_score(labels, predicted))
    assert metrics["precision"] == pytest.approx(precision_score(labels, predicted))
    assert metrics["recall"] == pytest.approx(recall_score(labels, predicted))
    assert metrics["specificity"] == pytest.approx(recall_score(1 - labels, ~predicted))


def test_threshold_maximises_f1_by_brute_force():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, 80)
    scores = np.round(rng.random(80) * 0.6 + labels * 0.2, 2)
    threshold = best_f1_threshold(torch.tensor(scores), torch.tensor(labels))
    best = max(f1_score(labels, scores >= t) for t in np.unique(scores))
    assert f1_score(labels, scores >= threshold) == pytest.approx(best)


def test_single_class_test_set_gives_nan_auroc_not_a_crash():
    metrics = classification_metrics(torch.tensor([0.2, 0.7]), torch.tensor([1, 1]), 0.5)
    assert np.isnan(metrics["auroc"]) and metrics["auprc"] == pytest.approx(1.0)


def test_class_weights_follow_the_protocol():
    weights = class_weights(torch.tensor([0, 0, 0, 1]))
    assert weights.tolist() == pytest.approx([4 / 6, 4 / 2])
