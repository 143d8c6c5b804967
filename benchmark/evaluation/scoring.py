"""From a classifier's scores to the result fields of a cell file, the same for every protocol.

Every protocol (``finetune``, ``linear``, ``knn``) ends the same way: the decision threshold is
the one that maximises F1 on the validation set, the metrics are computed on the test set at
that threshold, and every test and validation volume is recorded with its score, so that the
report can bootstrap, pair methods and split results by finding without re-running anything.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from benchmark.evaluation.metrics import best_f1_threshold, classification_metrics
from benchmark.results import Cell
from benchmark.rundata import RunData


class NonFiniteScoresError(RuntimeError):
    """A classifier produced NaN or infinite scores (for example, fine-tuning diverged)."""


def prediction_records(data: RunData, rows: np.ndarray, scores: Tensor) -> list[dict]:
    """``subject_id, side, label, pathology, score`` of each volume (score = P(anomalous)).

    ``pathology`` holds the manifest's findings (``;``-separated, empty for a normal volume or
    a cohort without a ``pathology`` column); the report's per-finding results read it here.
    """
    table = data.cohort.table.iloc[rows]
    findings = table["pathology"].fillna("") if "pathology" in table else [""] * len(table)
    return [
        {
            "subject_id": str(subject),
            "side": str(side),
            "label": int(label),
            "pathology": str(finding),
            "score": float(score),
        }
        for subject, side, label, finding, score in zip(
            table["subject_id"],
            table["side"],
            table["label"],
            findings,
            scores.tolist(),
            strict=True,
        )
    ]


def score_cell(
    cell: Cell,
    data: RunData,
    val_rows: np.ndarray,
    val_scores: Tensor,
    test_rows: np.ndarray,
    test_scores: Tensor,
    fix: str,
) -> dict:
    """``metrics, prevalence, threshold, n_val, n_test, predictions, validation_predictions``.

    ``fix`` completes the message raised on non-finite scores (which setting to change).
    """
    if not (torch.isfinite(val_scores).all() and torch.isfinite(test_scores).all()):
        raise NonFiniteScoresError(f"{cell.title}: non-finite classifier scores; {fix}")
    threshold = best_f1_threshold(val_scores, data.labels(val_rows))
    test_labels = data.labels(test_rows)
    return {
        "metrics": classification_metrics(test_scores, test_labels, threshold),
        "prevalence": float(test_labels.float().mean()),
        "threshold": threshold,
        "n_val": len(val_rows),
        "n_test": len(test_rows),
        "predictions": prediction_records(data, test_rows, test_scores),
        "validation_predictions": prediction_records(data, val_rows, val_scores),
    }
