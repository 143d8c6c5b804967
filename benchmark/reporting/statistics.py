"""Uncertainty and paired tests for evaluation results: what is resampled, and how.

Every cell (one fold x seed of a method x protocol x fraction) scores the same fixed test set
(the splits module keeps it fixed across seeds and folds). An entry of a table is the mean of
its cells' metrics; its spread over cells (std) is the training variation (folds, label subsets,
seeds). Test-set uncertainty is measured by resampling test *subjects*:

- ``subject_draws``: replicate ``b`` draws ``n_subjects`` test subjects with replacement.
  The same draws serve every cell, method and protocol of a report, so comparisons are paired.
- ``volume_weights``: a volume's weight in replicate ``b`` is the number of times its subject
  was drawn, so both sinuses of a subject always come (or stay out) together.
- Each cell's metric is recomputed on every replicate (``benchmark.evaluation.metrics``' weighted AUPRC,
  AUROC, F1 at the cell's own validation threshold) and the replicate's entry value is the mean
  over the entry's cells: scores of different models are never pooled into one ranking.
- ``percentile_interval``: the 95 % CI is the 2.5th-97.5th percentile of the replicate means.
  It is conditional on the trained models: it says how much the number would move on another
  test set of the same size, not how much retraining would move it (that is the std).
- ``paired_bootstrap_p``: the difference of two entries (a method minus the reference, over the
  fold x seed pairs both finished) on the same replicates; two-sided p-value of "no difference"
  from the bootstrap distribution shifted to zero (Efron & Tibshirani, An Introduction to the
  Bootstrap, 1993, ch. 16): ``(1 + #{|d_b - d| >= |d|}) / (B + 1)``.
  This p-value is conditional on the trained models (test-set noise only); the report's main
  test adds the training variation (``benchmark.reporting.comparison``).
- ``holm``: Holm's step-down adjustment over one family of comparisons (Holm, Scand J Stat
  1979), controlling the family-wise error rate.
- ``resamples_for_family``: a bootstrap p-value is at least ``1 / (B + 1)``, so after Holm over
  ``m`` tests at least ``m / (B + 1)``; ``B >= 20 m / alpha`` keeps that 20 times below alpha.
"""

from __future__ import annotations

import math

import numpy as np


def subject_draws(n_subjects: int, replicates: int, seed: int) -> np.ndarray:
    """``[replicates, n_subjects]`` indices of subjects drawn with replacement."""
    return np.random.default_rng(seed).integers(0, n_subjects, size=(replicates, n_subjects))


def volume_weights(draws: np.ndarray, subject_of_volume: np.ndarray) -> np.ndarray:
    """``[replicates, n_volumes]``: how often each volume's subject was drawn in each replicate."""
    n_subjects = int(subject_of_volume.max()) + 1 if len(subject_of_volume) else 0
    offsets = np.arange(len(draws))[:, None] * n_subjects
    counts = np.bincount((draws + offsets).ravel(), minlength=len(draws) * n_subjects)
    return counts.reshape(len(draws), n_subjects)[:, subject_of_volume].astype(float)


def percentile_interval(replicates: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` percentile interval of replicate values (NaNs ignored)."""
    finite = np.asarray(replicates, dtype=float)
    finite = finite[np.isfinite(finite)]
    if not len(finite):
        return float("nan"), float("nan")
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


def paired_bootstrap_p(difference: float, replicate_differences: np.ndarray) -> float:
    """Two-sided bootstrap p-value of "no difference" (see the module docstring)."""
    replicates = np.asarray(replicate_differences, dtype=float)
    replicates = replicates[np.isfinite(replicates)]
    if not len(replicates) or not np.isfinite(difference):
        return float("nan")
    extreme = np.abs(replicates - difference) >= abs(difference) - 1e-12
    return float((1 + extreme.sum()) / (len(replicates) + 1))


def holm(p_values: np.ndarray) -> np.ndarray:
    """Holm-adjusted p-values (NaNs stay NaN and do not count as comparisons)."""
    p_values = np.asarray(p_values, dtype=float)
    adjusted = np.full_like(p_values, np.nan)
    finite = np.flatnonzero(np.isfinite(p_values))
    order = finite[np.argsort(p_values[finite], kind="stable")]
    m = len(order)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def resamples_for_family(family_size: int, alpha: float, requested: int | None = None) -> int:
    """``requested`` when given, else the fewest resamples (at least 1,000) for which the
    smallest Holm-adjusted bootstrap p-value of ``family_size`` tests is ``alpha / 20``."""
    if requested is not None:
        return int(requested)
    return max(1000, math.ceil(20 * max(family_size, 1) / alpha))
