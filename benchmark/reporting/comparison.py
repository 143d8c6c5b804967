"""Is method A better than method B? A paired test whose variance includes training variation.

Data of one comparison (one protocol, label fraction and metric): the cells both methods
finished, paired by (fold, seed). Per pair ``c`` the observed difference ``d_c = A_c - B_c``
of the cell metrics, the pretraining seed ``s(c)`` of the pair, and the paired test-subject
bootstrap (``benchmark.reporting.statistics``): replicate ``b`` of the mean difference over the
pairs, both methods on the same resampled subjects. The effect is ``D``, the mean over seeds of
each seed's mean difference (the plain mean of ``d`` when every seed has as many cells).

Its variance has two parts that come from different sources, so they are estimated where each
one is visible and added (``VarianceComponents``):

- **training** (which pretraining run, which labelled subset and fold a model saw): cells of one
  seed share an encoder and most of their training subjects, so they are not independent
  (Nadeau & Bengio, Machine Learning 52, 2003; Bouthillier et al., MLSys 2021). With ``S >= 2``
  seeds the seed means are independent draws: ``var(m_s) / S`` with ``S - 1`` degrees of
  freedom, whatever the correlation inside a seed (the cluster, or between-seed, estimate).
  With one seed only the spread of its ``C`` cells is visible; Nadeau and Bengio's correction
  for overlapping training sets, with the ``1 / (C - 1)`` held-out to training ratio of
  ``C``-fold cross-validation, gives ``(1 / C + 1 / (C - 1)) var(d)`` with ``C - 1`` degrees of
  freedom (Bouckaert & Frank, PAKDD 2004). Pretraining variation is then not sampled at all.
- **test subjects**: every cell scores the same fixed test set, so test-set noise is shared by
  all cells and never shows in their spread; the variance of the paired subject-bootstrap
  replicates of ``D`` measures it, with ``N - 1`` degrees of freedom for ``N`` test subjects.

``t = D / sqrt(v_training + v_test)`` is referred to Student's t with Welch-Satterthwaite
degrees of freedom (Satterthwaite, Biometrics Bulletin 1946), computed with ``v_training`` at
its upper 75 % confidence limit (chi-squared): with 2-4 training degrees of freedom the plain
formula raises the degrees of freedom exactly when ``v_training`` is underestimated by chance,
and its type-I error then exceeded alpha in simulation (0.06-0.09 at 0.05, training-dominated);
with the limit it stays at or below alpha. The two-sided p-value and the
``level`` CI ``D ± t_q se`` follow. The minimum detectable difference at power ``1 - beta`` and
two-sided level ``alpha`` is ``(t_{1 - alpha/2} + t_{1 - beta}) se`` (the normal-approximation
formula with t quantiles; e.g. Cohen, Statistical Power Analysis, 1988). Why not the
hierarchical bootstrap (seeds, cells, subjects) alone: with 1-3 seeds a cluster bootstrap
underestimates the top level's variance by ``(S - 1) / S`` and has normal tails where Student's
with ``S - 1`` degrees of freedom are due (Cameron, Gelbach & Miller, REStat 2008); the
simulation tests (tests/reporting/test_calibration.py) check this test's type-I error and power.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy.stats import chi2
from scipy.stats import t as student_t

POWER = 0.8
DF_CONFIDENCE = 0.75  # the training variance's upper limit used for the degrees of freedom


@dataclass(frozen=True)
class VarianceComponents:
    """Variance of the mean difference ``D`` from training and from the test subjects."""

    seeds: int  # pretraining seeds with a paired cell
    cells: int  # paired cells
    between_seeds: float  # variance of the seed means (NaN with one seed)
    within_seeds: float  # pooled variance of the cells around their seed's mean (NaN if none)
    training: float  # variance of D from training (NaN when not estimable: one cell)
    training_df: float
    test: float  # variance of D from the test subjects (paired subject bootstrap)
    test_df: float

    @property
    def total(self) -> float:
        return self.training + self.test

    @property
    def standard_error(self) -> float:
        return math.sqrt(self.total) if self.total >= 0 else math.nan

    @property
    def df(self) -> float:
        """Welch-Satterthwaite degrees of freedom of the sum, with the training variance at its
        upper ``DF_CONFIDENCE`` confidence limit (inf when the sum is exactly 0)."""
        training = self.training
        if training > 0:
            training *= self.training_df / chi2.ppf(1 - DF_CONFIDENCE, self.training_df)
        parts = [(training, self.training_df), (self.test, self.test_df)]
        denominator = sum(v * v / df for v, df in parts if v > 0)
        return (training + self.test) ** 2 / denominator if denominator > 0 else math.inf


def seed_means(values: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """The mean of each seed's cells (rows of ``values`` ``[C]`` or ``[C, B]``, NaN ignored),
    in sorted seed order: ``[S]`` or ``[S, B]``."""
    values, seeds = np.asarray(values, dtype=float), np.asarray(seeds)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column stays NaN
        return np.stack([np.nanmean(values[seeds == s], axis=0) for s in np.unique(seeds)])


def mean_difference(differences: np.ndarray, seeds: np.ndarray) -> np.ndarray | float:
    """``D``: the mean over seeds of each seed's mean difference; for ``[C, B]`` replicates,
    ``[B]`` (NaN without cells)."""
    if not len(differences):
        return math.nan
    means = seed_means(differences, seeds).mean(axis=0)
    return float(means) if np.ndim(means) == 0 else means


def variance_components(
    differences: np.ndarray, seeds: np.ndarray, replicate_differences: np.ndarray, subjects: int
) -> VarianceComponents:
    """The training and test-subject variance of ``D`` (see the module docstring).

    ``differences[c]``, ``seeds[c]``: each paired cell's metric difference and pretraining seed;
    ``replicate_differences[b]``: the paired subject bootstrap's replicates of ``D``
    (``mean_difference`` of the cells' replicate differences ``[C, B]``);
    ``subjects``: the number of test subjects resampled.
    """
    differences, seeds = np.asarray(differences, dtype=float), np.asarray(seeds)
    means = seed_means(differences, seeds)
    n_seeds, n_cells = len(means), len(differences)
    residuals = differences - means[np.searchsorted(np.unique(seeds), seeds)]
    within_df = n_cells - n_seeds
    within = float(residuals @ residuals / within_df) if within_df > 0 else math.nan
    between = float(means.var(ddof=1)) if n_seeds > 1 else math.nan
    if n_seeds > 1:
        training, training_df = between / n_seeds, n_seeds - 1.0
    elif n_cells > 1:
        training, training_df = (1 / n_cells + 1 / (n_cells - 1)) * within, n_cells - 1.0
    else:
        training, training_df = math.nan, math.nan
    replicates = np.asarray(replicate_differences, dtype=float)
    replicates = replicates[np.isfinite(replicates)]
    test = float(replicates.var(ddof=1)) if len(replicates) > 1 else math.nan
    return VarianceComponents(
        n_seeds, n_cells, between, within, training, training_df, test, max(subjects - 1.0, 1.0)
    )


def minimum_detectable_difference(
    standard_error: float, df: float, alpha: float, power: float = POWER
) -> float:
    """The smallest true difference a two-sided level-``alpha`` t-test detects with ``power``."""
    if not (math.isfinite(standard_error) and df > 0):
        return math.nan
    return float((student_t.ppf(1 - alpha / 2, df) + student_t.ppf(power, df)) * standard_error)


def power_at(effect: float, standard_error: float, df: float, alpha: float) -> float:
    """Power of the two-sided level-``alpha`` t-test against a true difference ``effect``
    (the same approximation as ``minimum_detectable_difference``, both tails counted)."""
    critical = student_t.ppf(1 - alpha / 2, df)
    shift = effect / standard_error
    return float(student_t.sf(critical - shift, df) + student_t.cdf(-critical - shift, df))


@dataclass(frozen=True)
class PairedTest:
    """One comparison: the effect, its CI, the p-value and what the run could have detected."""

    difference: float  # D, own minus other
    low: float  # CI of D (level of the call)
    high: float
    p: float  # two-sided p of "no difference", training and test variation
    mdd: float  # minimum detectable difference at power POWER and the given per-test alpha
    components: VarianceComponents

    @property
    def standard_error(self) -> float:
        return self.components.standard_error

    @property
    def df(self) -> float:
        return self.components.df


def paired_test(
    differences: np.ndarray,
    seeds: np.ndarray,
    replicate_differences: np.ndarray,
    subjects: int,
    alpha: float,
    level: float = 0.95,
    power: float = POWER,
) -> PairedTest:
    """The paired t-test of the module docstring; ``alpha`` is the per-test level the MDD is
    computed at (for Holm over ``m`` tests the caller passes ``alpha / m``, Holm's first step).
    Without an estimable training variance (a single cell) p, CI and MDD are NaN."""
    components = variance_components(differences, seeds, replicate_differences, subjects)
    difference = mean_difference(differences, seeds)
    se, df = components.standard_error, components.df
    if not (math.isfinite(se) and math.isfinite(difference)):
        return PairedTest(difference, math.nan, math.nan, math.nan, math.nan, components)
    if se == 0:
        p = 1.0 if difference == 0 else 0.0
        return PairedTest(difference, difference, difference, p, 0.0, components)
    half_width = student_t.ppf(1 - (1 - level) / 2, df) * se
    p = float(2 * student_t.sf(abs(difference) / se, df))
    mdd = minimum_detectable_difference(se, df, alpha, power)
    return PairedTest(
        difference, difference - half_width, difference + half_width, p, mdd, components
    )
