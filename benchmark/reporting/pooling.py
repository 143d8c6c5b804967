"""Rotating test folds: which test design the cells show, and their pooled out-of-fold scores.

With ``splits.test_mode=rotating`` (outer cross-validation, ``benchmark.datasets.splits``) the
cell of fold k scores only fold k's test part, a fifth of the subjects with 5 folds. Its own
AUPRC is kept, but the estimate that uses every labelled subject is the AUPRC of the folds'
out-of-fold predictions pooled per method x protocol x label fraction x seed: each subject is
scored once per seed, by the model of the fold that held it out (Varma & Simon, BMC
Bioinformatics 2006, on cross-validated performance estimates; pooling rather than averaging
per-fold AUPRCs keeps every threshold-free ranking over the whole cohort). Scores of different
folds' models are ranked together, so a pooled AUPRC also pays for calibration differences
between folds: it is the number a user of "train on the cohort" can expect, not an average of
five small test sets.

The design is read from the cells' predictions, never from the settings: ``fixed`` when every
cell scored the same subjects, ``rotating`` when the folds of each method x protocol x fraction
x seed scored disjoint subject sets.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd
import torch

from benchmark.evaluation.metrics import weighted_average_precision
from benchmark.reporting.collect import MixedConfigurationError
from benchmark.reporting.statistics import percentile_interval, subject_draws, volume_weights

POOL = ["method", "protocol", "fraction", "seed"]
PREDICTION_COLUMNS = [*POOL, "fold", "subject_id", "side", "label", "score"]


def pooled_predictions(cells: Iterable[dict]) -> pd.DataFrame:
    """Every test prediction of the finished cells, one row each, with its cell's ``POOL`` key
    and fold (``PREDICTION_COLUMNS``), sorted; pool a group by selecting on ``POOL``."""
    rows = [
        (
            str(cell["method"]),
            str(cell["protocol"]),
            float(cell["fraction"]),
            int(cell["seed"]),
            int(cell["fold"]),
            str(p["subject_id"]),
            str(p["side"]),
            int(p["label"]),
            float(p["score"]),
        )
        for cell in cells
        if cell.get("status", "done") == "done"
        for p in cell.get("predictions") or []
    ]
    frame = pd.DataFrame(rows, columns=PREDICTION_COLUMNS)
    return frame.sort_values([*POOL, "subject_id", "side"], ignore_index=True)


def evaluation_design(predictions: pd.DataFrame) -> str:
    """``fixed``, ``rotating`` or (no predictions) ``none``; refuses anything else."""
    if predictions.empty:
        return "none"
    subjects = predictions.groupby([*POOL, "fold"])["subject_id"].agg(frozenset)
    if subjects.nunique() == 1:
        return "fixed"
    for key, folds in subjects.groupby(level=POOL):
        tested = [s for members in folds for s in members]
        if len(folds) > 1 and len(tested) != len(set(tested)):
            raise MixedConfigurationError(
                f"the cells of {dict(zip(POOL, key))} scored overlapping but different test "
                "subjects in their folds: neither one fixed test set nor rotating test folds. "
                "Report one run's cells per folder."
            )
    return "rotating"


def pooled_auprc(
    predictions: pd.DataFrame, replicates: int = 1000, seed: int = 0, level: float = 0.95
) -> pd.DataFrame:
    """Per method x protocol x fraction: the pooled out-of-fold AUPRC of each seed, their mean
    and std over seeds, and a ``level`` CI of the mean by the report's subject bootstrap (the
    same draws of all subjects for every entry). Columns ``method, fraction, mean, std, n``
    (complete seeds), ``failed`` (0), ``missing`` (seeds skipped because a fold's cell did not
    finish, so their pool lacks subjects), ``ci_low, ci_high, prevalence, subjects, volumes,
    protocol``."""
    volumes = predictions[["subject_id", "side", "label"]].drop_duplicates(["subject_id", "side"])
    volumes = volumes.sort_values(["subject_id", "side"], ignore_index=True)
    subject_index = {s: i for i, s in enumerate(sorted(volumes["subject_id"].unique()))}
    position = {key: i for i, key in enumerate(zip(volumes["subject_id"], volumes["side"]))}
    weights = torch.as_tensor(
        volume_weights(
            subject_draws(len(subject_index), replicates, seed),
            volumes["subject_id"].map(subject_index).to_numpy(),
        )
    )
    labels = torch.as_tensor(volumes["label"].to_numpy(float))
    rows = []
    for (method, protocol, fraction), entry in predictions.groupby(POOL[:3], sort=True):
        values, resampled = [], []
        for _, pool in entry.groupby("seed"):
            if len(pool) != len(volumes):
                continue  # a fold missing or failed: this seed's pool is not out-of-fold
            scores = np.zeros(len(volumes))
            scores[[position[k] for k in zip(pool["subject_id"], pool["side"])]] = pool["score"]
            scores = torch.as_tensor(scores)
            values.append(float(weighted_average_precision(scores, labels)))
            resampled.append(weighted_average_precision(scores, labels, weights).numpy())
        low, high = (
            percentile_interval(np.mean(resampled, axis=0), level) if values else (np.nan,) * 2
        )
        rows.append(
            {
                "method": method,
                "fraction": fraction,
                "mean": np.mean(values) if values else np.nan,
                "std": np.std(values, ddof=1) if len(values) > 1 else np.nan,
                "n": len(values),
                "failed": 0,
                "missing": entry["seed"].nunique() - len(values),
                "ci_low": low,
                "ci_high": high,
                "prevalence": float(labels.mean()),
                "subjects": len(subject_index),
                "volumes": len(volumes),
                "protocol": protocol,
            }
        )
    return pd.DataFrame(rows)
