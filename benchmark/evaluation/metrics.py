"""Classification metrics of one evaluation cell (torchmetrics).

AUPRC (average precision) is the headline metric (docs/protocol.md); a random classifier's AUPRC is
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


def _sorted_rows(scores: Tensor, labels: Tensor, weights: Tensor | None):
    """Rows sorted by descending score, as float64 ``[R, N]``, and the end of each tie group."""
    scores = torch.as_tensor(scores, dtype=torch.float64)
    labels = torch.as_tensor(labels, dtype=torch.float64)
    weights = torch.ones_like(labels) if weights is None else torch.as_tensor(weights)
    if scores.dim() == 1 and labels.dim() == 1 and weights.dim() == 2:
        # One ranking under many weightings (the bootstrap): sort once and reorder the weights'
        # columns; the labels, positions and tie groups are one row, broadcast (views).
        order = torch.argsort(scores, descending=True, stable=True)
        ranked = scores[order]
        rows = weights.shape[0]
        weights = weights.to(scores.device, torch.float64)[:, order.to(weights.device)]
        group_ends = torch.ones_like(ranked, dtype=torch.bool)
        group_ends[:-1] = ranked[1:] != ranked[:-1]
        positions = torch.arange(len(ranked), device=scores.device)
        return (
            labels.to(scores.device)[order].expand(rows, -1),
            weights,
            positions.expand(rows, -1),
            group_ends.expand(rows, -1),
        )
    scores, labels, weights = torch.broadcast_tensors(
        scores, labels.to(scores.device), weights.to(scores.device, torch.float64)
    )
    scores, labels, weights = (t.reshape(-1, t.shape[-1]) for t in (scores, labels, weights))
    order = torch.argsort(scores, dim=1, descending=True, stable=True)
    scores, labels, weights = (t.gather(1, order) for t in (scores, labels, weights))
    positions = torch.arange(scores.shape[1], device=scores.device).expand_as(scores)
    group_ends = torch.ones_like(scores, dtype=torch.bool)
    group_ends[:, :-1] = scores[:, 1:] != scores[:, :-1]
    return labels, weights, positions, group_ends


def _group_end(positions: Tensor, group_ends: Tensor) -> Tensor:
    """For each sorted position, the position of the last element of its tie group."""
    if group_ends.shape[0] > 1 and group_ends.stride(0) == 0:  # one row broadcast: once
        return _group_end(positions[:1], group_ends[:1]).expand_as(positions)
    last = torch.where(group_ends, positions, positions.shape[1])
    return torch.flip(torch.cummin(torch.flip(last, [1]), dim=1).values, [1])


def weighted_average_precision(
    scores: Tensor, labels: Tensor, weights: Tensor | None = None
) -> Tensor:
    """Average precision of each row ``[R]`` of ``[R, N]`` scores (or one ``[N]`` row).

    Scores, labels and weights broadcast against each other, so one set of scores can be
    evaluated under many bootstrap weightings at once (a weight is how often a volume was
    drawn). Ties are one threshold, as in scikit-learn's ``average_precision_score`` with
    ``sample_weight``, which it equals: AP = sum_i w_i y_i P(end of i's tie group) / sum w y.
    NaN for a row without positive weight.
    """
    labels, weights, positions, group_ends = _sorted_rows(scores, labels, weights)
    true_positives = torch.cumsum(weights * labels, dim=1)
    predicted = torch.cumsum(weights, dim=1)
    precision = true_positives / predicted.clamp_min(torch.finfo(torch.float64).tiny)
    at_group_end = precision.gather(1, _group_end(positions, group_ends))
    positives = true_positives[:, -1]
    total = (weights * labels * at_group_end).sum(dim=1)
    return torch.where(positives > 0, total / positives.clamp_min(1e-300), torch.nan)


def weighted_auroc(scores: Tensor, labels: Tensor, weights: Tensor | None = None) -> Tensor:
    """AUROC of each row (as ``weighted_average_precision``; ties count one half).

    Equals scikit-learn's ``roc_auc_score`` with ``sample_weight``; NaN for a row without
    both classes.
    """
    labels, weights, positions, group_ends = _sorted_rows(scores, labels, weights)
    negatives_above = torch.cumsum(weights * (1 - labels), dim=1)  # inclusive, descending order
    through_group = negatives_above.gather(1, _group_end(positions, group_ends))
    previous_end = torch.where(group_ends, positions, -1).cummax(dim=1).values
    previous_end = torch.cat([torch.full_like(previous_end[:, :1], -1), previous_end[:, :-1]], 1)
    before_group = torch.where(
        previous_end >= 0, negatives_above.gather(1, previous_end.clamp_min(0)), 0.0
    )
    positive_weight = (weights * labels).sum(dim=1)
    negative_weight = negatives_above[:, -1]
    ranked_above = (weights * labels * (through_group + before_group) / 2).sum(dim=1)
    pairs = positive_weight * negative_weight
    return torch.where(pairs > 0, 1 - ranked_above / pairs.clamp_min(1e-300), torch.nan)


def weighted_f1(
    scores: Tensor, labels: Tensor, threshold: float, weights: Tensor | None = None
) -> Tensor:
    """F1 of each row at ``score >= threshold`` (0 when there is nothing to count)."""
    scores = torch.as_tensor(scores, dtype=torch.float64)
    labels = torch.as_tensor(labels, dtype=torch.float64)
    weights = torch.ones_like(labels) if weights is None else torch.as_tensor(weights)
    predicted = (scores >= threshold).double()
    true_positive = (weights * labels * predicted).sum(dim=-1)
    errors = (weights * ((1 - labels) * predicted + labels * (1 - predicted))).sum(dim=-1)
    denominator = 2 * true_positive + errors
    return torch.where(denominator > 0, 2 * true_positive / denominator.clamp_min(1e-300), 0.0)
