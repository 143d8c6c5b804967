"""Classification metrics of one evaluation cell (torchmetrics).

AUPRC (average precision) is the headline metric (PROTOCOL.md); a random classifier's AUPRC is
the positive-class prevalence of the test set, which every result reports beside it. F1,
precision, recall and specificity are taken at the threshold that maximises F1 on the
validation set, never on the test set.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_average_precision,
    binary_precision_recall_curve,
)


def best_f1_threshold(scores: Tensor, labels: Tensor) -> float:
    """The score threshold (predict anomalous when ``score >= threshold``) of maximal F1.

    Ties go to the highest such threshold. Without any positive label there is no F1 to
    maximise and 0.5 is returned.
    """
    labels = labels.long()
    if labels.sum() == 0:
        return 0.5
    precision, recall, thresholds = binary_precision_recall_curve(scores.float(), labels)
    precision, recall = precision[:-1], recall[:-1]  # the last point has no threshold
    f1 = 2 * precision * recall / (precision + recall).clamp_min(1e-12)
    best = torch.nonzero(f1 == f1.max()).flatten()
    return float(thresholds[best].max())


def classification_metrics(scores: Tensor, labels: Tensor, threshold: float) -> dict[str, float]:
    """AUPRC, AUROC and the thresholded metrics of scores (probability of "anomalous").

    AUROC (and AUPRC without positives) is NaN when the labels hold a single class.
    """
    scores, labels = scores.float(), labels.long()
    both_classes = 0 < int(labels.sum()) < len(labels)
    predicted = scores >= threshold
    positive = labels == 1
    true_positive = int((predicted & positive).sum())
    false_positive = int((predicted & ~positive).sum())
    false_negative = int((~predicted & positive).sum())
    true_negative = int((~predicted & ~positive).sum())
    return {
        "auprc": float(binary_average_precision(scores, labels)) if positive.any() else math.nan,
        "auroc": float(binary_auroc(scores, labels)) if both_classes else math.nan,
        "f1": _ratio(2 * true_positive, 2 * true_positive + false_positive + false_negative),
        "precision": _ratio(true_positive, true_positive + false_positive),
        "recall": _ratio(true_positive, true_positive + false_negative),
        "specificity": _ratio(true_negative, true_negative + false_positive),
    }


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0
