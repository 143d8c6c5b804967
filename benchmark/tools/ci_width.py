"""How many test subjects a single AUPRC needs: the width of the report's bootstrap CI, simulated.

``python -m benchmark.tools.ci_width [--subjects 45,160,...] [--datasets 40]`` prints, per number
of test subjects, the half-width of the 95 % CI of one cell's AUPRC, averaged over simulated
test sets (and the 90th percentile over them), for classifiers of AUPRC about 0.65, 0.72 and
0.80. The profiles' ``phantom.test_subjects`` come from this table (docs/protocol.md, "Test
set size").

The simulation follows the built-in phantom (``benchmark.datasets.phantom``) and the report:

- each subject has two sinuses; the left is anomalous with the phantom's prevalence (0.55), the
  right with ``prevalence + BILATERAL_CORRELATION * (left - prevalence)``, as the phantom draws
  them, so the labels of a subject are correlated;
- a classifier's score is ``separation * label + subject effect + noise`` with Gaussian subject
  effect and noise (``subject_share`` of the unit score variance is shared by a subject's two
  sinuses: both sinuses of one head look alike to an encoder); ``separation`` is solved for the
  target AUPRC on a large sample;
- the CI is the report's own: subjects resampled with replacement (``subject_draws``), both
  sinuses of a drawn subject weighted together (``volume_weights``), the weighted AUPRC of
  ``benchmark.evaluation.metrics`` per replicate, and the central 95 % percentile interval
  (``percentile_interval``), all from ``benchmark.reporting.statistics``.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import numpy as np
import torch

from benchmark.datasets.phantom import BILATERAL_CORRELATION
from benchmark.evaluation.metrics import weighted_average_precision
from benchmark.reporting.statistics import percentile_interval, subject_draws, volume_weights

PREVALENCE = 0.55
TARGET_AUPRCS = (0.65, 0.72, 0.80)
SUBJECT_SHARE = 0.3


def draw_test_set(
    subjects: int, separation: float, rng: np.random.Generator, subject_share: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, scores and the subject index of ``2 * subjects`` sinuses (left, right)."""
    left = rng.random(subjects) < PREVALENCE
    right_probability = PREVALENCE + BILATERAL_CORRELATION * (left - PREVALENCE)
    right = rng.random(subjects) < right_probability
    labels = np.stack([left, right], axis=1).astype(float).ravel()
    shared = np.repeat(rng.normal(0, np.sqrt(subject_share), subjects), 2)
    noise = rng.normal(0, np.sqrt(1 - subject_share), 2 * subjects)
    return labels, separation * labels + shared + noise, np.repeat(np.arange(subjects), 2)


def auprc(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    weights = None if weights is None else torch.as_tensor(weights)
    value = weighted_average_precision(torch.as_tensor(scores), torch.as_tensor(labels), weights)
    return value.numpy()


def separation_for(target: float, subject_share: float, seed: int = 0) -> float:
    """The score separation whose expected AUPRC is ``target`` (bisection on 20,000 subjects)."""
    labels, noise, _ = draw_test_set(20_000, 0.0, np.random.default_rng(seed), subject_share)
    low, high = 0.0, 5.0
    for _ in range(40):
        middle = (low + high) / 2
        if auprc(labels, middle * labels + noise).item() < target:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def half_widths(
    subjects: int,
    separation: float,
    datasets: int,
    replicates: int,
    seed: int,
    subject_share: float = SUBJECT_SHARE,
) -> np.ndarray:
    """CI half-widths of ``datasets`` simulated test sets of ``subjects`` subjects."""
    rng = np.random.default_rng([seed, subjects])
    widths = []
    for dataset in range(datasets):
        labels, scores, subject_of_volume = draw_test_set(subjects, separation, rng, subject_share)
        weights = volume_weights(subject_draws(subjects, replicates, dataset), subject_of_volume)
        low, high = percentile_interval(auprc(labels, scores, weights))
        widths.append((high - low) / 2)
    return np.array(widths)


def table(
    subjects: list[int], datasets: int, replicates: int, seed: int, subject_share: float
) -> Iterator[str]:
    """The lines of the Markdown table of ``main`` (a row per number of test subjects)."""
    separations = {t: separation_for(t, subject_share) for t in TARGET_AUPRCS}
    header = "| test subjects (volumes) | " + " | ".join(
        f"AUPRC {t:.2f}: mean / p90" for t in TARGET_AUPRCS
    )
    yield header + " |"
    yield "|---" * (len(TARGET_AUPRCS) + 1) + "|"
    for count in subjects:
        cells = []
        for separation in separations.values():
            widths = half_widths(count, separation, datasets, replicates, seed, subject_share)
            cells.append(f"±{widths.mean():.3f} / ±{np.quantile(widths, 0.9):.3f}")
        yield f"| {count} ({2 * count}) | " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", default="45,100,160,250,300,350,400,600,800,900,1000")
    parser.add_argument("--datasets", type=int, default=40, help="simulated test sets per cell")
    parser.add_argument("--replicates", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--subject-share", type=float, default=SUBJECT_SHARE)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    counts = [int(c) for c in args.subjects.split(",")]
    for line in table(counts, args.datasets, args.replicates, args.seed, args.subject_share):
        print(line, flush=True)


if __name__ == "__main__":
    main()
