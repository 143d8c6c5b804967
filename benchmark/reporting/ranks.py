"""Ranks across the grid: mean ranks of the methods over label fractions, the Friedman test and
the Nemenyi critical difference, drawn as a critical-difference diagram (Demšar, "Statistical
comparisons of classifiers over multiple data sets", JMLR 7, 2006).

Per protocol, each label fraction is one block: the competing methods (role ``method``) are
ranked by their mean metric over the fraction's cells (rank 1 = highest; ties share the mean
rank), and the ranks are averaged over the fractions. Only fractions where every ranked method
finished a cell count. The cells of a fraction are averaged first, not ranked one by one: the
fold x seed cells of a fraction share the test set and most training data, so they are not the
independent data sets the test assumes (and a fraction's mean is what its table column shows).
Fractions are not independent either (label subsets are nested), so the ranks describe the
grid; the per-fraction paired tests (``benchmark.reporting.comparison``) carry the inference.

- Friedman's statistic (Friedman 1937; Demšar's eq. 1, with the correction for tied ranks that
  ``scipy.stats.friedmanchisquare`` applies) and Iman and Davenport's F (1980), which Demšar
  recommends as less conservative.
- Nemenyi's critical difference ``CD = q_alpha sqrt(k (k + 1) / (6 N))`` for ``k`` methods and
  ``N`` fractions, ``q_alpha`` the studentized range quantile over ``sqrt(2)`` (Nemenyi 1963;
  Demšar's Table 5a): two methods whose mean ranks differ by less than CD are not told apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy.stats import chi2, f, rankdata, studentized_range  # noqa: E402


def nemenyi_q(methods: int, alpha: float = 0.05) -> float:
    """Demšar's ``q_alpha`` for ``methods`` classifiers: the studentized range quantile at
    infinite degrees of freedom over ``sqrt(2)``."""
    return float(studentized_range.ppf(1 - alpha, methods, math.inf) / math.sqrt(2))


@dataclass(frozen=True)
class RankTest:
    """Mean ranks of ``k`` methods over ``N`` blocks, Friedman's test and Nemenyi's CD."""

    mean_ranks: pd.Series  # method -> mean rank (1 = best), best first
    blocks: list  # the fractions ranked
    friedman: float  # chi-squared statistic, k - 1 degrees of freedom
    friedman_p: float
    iman_davenport: float  # F statistic, (k - 1, (k - 1)(N - 1)) degrees of freedom
    iman_davenport_p: float
    critical_difference: float
    alpha: float

    @property
    def methods(self) -> int:
        return len(self.mean_ranks)

    def cliques(self) -> list[tuple[str, ...]]:
        """Maximal runs of methods (in rank order) whose mean ranks lie within the CD."""
        names, ranks = list(self.mean_ranks.index), self.mean_ranks.to_numpy()
        runs = []
        for start in range(len(names)):
            end = start
            while end + 1 < len(names) and ranks[end + 1] - ranks[start] < self.critical_difference:
                end += 1
            if end > start and not (runs and runs[-1][1] >= end):
                runs.append((start, end))
        return [tuple(names[a : b + 1]) for a, b in runs]


def friedman_test(values: pd.DataFrame, alpha: float = 0.05) -> RankTest:
    """``values``: blocks (fractions) x methods, higher is better, no missing values."""
    blocks, k = values.shape
    ranks = np.apply_along_axis(rankdata, 1, -values.to_numpy(float))  # [N, k], 1 = best
    mean_ranks = ranks.mean(axis=0)
    statistic = 12 * blocks / (k * (k + 1)) * (np.sum(mean_ranks**2) - k * (k + 1) ** 2 / 4)
    ties = sum(
        (counts**3 - counts).sum()
        for counts in (np.unique(r, return_counts=True)[1] for r in ranks)
    )
    correction = 1 - ties / (blocks * k * (k * k - 1))
    statistic = statistic / correction if correction > 0 else math.nan
    p = float(chi2.sf(statistic, k - 1))
    denominator = blocks * (k - 1) - statistic
    iman = (blocks - 1) * statistic / denominator if denominator > 0 else math.inf
    iman_p = float(f.sf(iman, k - 1, (k - 1) * (blocks - 1))) if math.isfinite(iman) else 0.0
    order = np.argsort(mean_ranks, kind="stable")
    return RankTest(
        pd.Series(mean_ranks[order], index=values.columns[order]),
        list(values.index),
        float(statistic),
        p,
        float(iman),
        iman_p,
        nemenyi_q(k, alpha) * math.sqrt(k * (k + 1) / (6 * blocks)),
        alpha,
    )


def rank_tests(
    summary: pd.DataFrame, protocols: list[str], alpha: float = 0.05
) -> tuple[dict[str, RankTest], dict[str, str]]:
    """Per protocol, the ``RankTest`` of the competing methods over the fractions, from a
    report's entries (``summaries.entries``); or, where it cannot be drawn, why not."""
    tests, reasons = {}, {}
    for protocol in protocols:
        rows = summary[(summary["protocol"] == protocol) & (summary["role"] == "method")]
        means = rows[rows["n"] > 0].pivot(index="fraction", columns="method", values="mean")
        complete = means.dropna()
        dropped = sorted(set(means.index) - set(complete.index))
        if complete.shape[1] < 2 or len(complete) < 2:
            reasons[protocol] = (
                f"{complete.shape[1]} competing method(s) over {len(complete)} label fraction(s) "
                "that every one finished: ranks need at least 2 of each"
            )
            continue
        tests[protocol] = friedman_test(complete, alpha)
        if dropped:
            reasons[protocol] = (
                "fraction(s) left out (not every method finished a cell): "
                + ", ".join(f"{d:g}" for d in dropped)
            )
    return tests, reasons


def ranks_frame(tests: dict[str, RankTest]) -> pd.DataFrame:
    """One row per protocol and method: ``protocol, method, mean_rank, methods, fractions,
    friedman, friedman_p, iman_davenport, iman_davenport_p, critical_difference, alpha``."""
    rows = [
        {
            "protocol": protocol,
            "method": method,
            "mean_rank": rank,
            "methods": test.methods,
            "fractions": len(test.blocks),
            "friedman": test.friedman,
            "friedman_p": test.friedman_p,
            "iman_davenport": test.iman_davenport,
            "iman_davenport_p": test.iman_davenport_p,
            "critical_difference": test.critical_difference,
            "alpha": test.alpha,
        }
        for protocol, test in tests.items()
        for method, rank in test.mean_ranks.items()
    ]
    return pd.DataFrame(rows)


def draw_critical_difference(test: RankTest, title: str, path: Path) -> Path:
    """Demšar's diagram: a rank axis (1 on the left), each method at its mean rank, the CD as a
    bar above the axis, and a thick line joining each clique of methods within the CD."""
    k = test.methods
    names, ranks = list(test.mean_ranks.index), test.mean_ranks.to_numpy()
    left = (len(names) + 1) // 2  # the better half is labelled on the left
    cliques = test.cliques()
    height = 1.2 + 0.28 * (left + len(cliques))
    figure, axis = plt.subplots(figsize=(7.0, height))
    axis.set_xlim(0.4 - 0.35 * k, k + 0.6 + 0.35 * k)
    axis.set_ylim(-0.25 * (left + 1) - 0.2 * len(cliques), 1.0)
    axis.axis("off")
    axis.hlines(0, 1, k, color="black", linewidth=1)
    for tick in range(1, k + 1):
        axis.vlines(tick, 0, 0.08, color="black", linewidth=1)
        axis.text(tick, 0.13, str(tick), ha="center", va="bottom", fontsize=8)
    cd = test.critical_difference
    axis.hlines(0.65, 1, 1 + cd, color="black", linewidth=1.2)
    axis.vlines([1, 1 + cd], 0.6, 0.7, color="black", linewidth=1.2)
    axis.text(1 + cd / 2, 0.74, f"CD = {cd:.2f}", ha="center", va="bottom", fontsize=8)
    clique_rows = len(cliques)
    for index, (name, rank) in enumerate(zip(names, ranks, strict=True)):
        on_left = index < left
        row = index if on_left else len(names) - 1 - index
        y = -0.25 * (row + 1) - 0.2 * clique_rows
        end = 0.4 - 0.35 * k + 0.05 if on_left else k + 0.6 + 0.35 * k - 0.05
        axis.plot([rank, rank, end], [0, y, y], color="black", linewidth=0.8)
        axis.text(
            end,
            y + 0.03,
            f"{name} ({rank:.2f})",
            ha="left" if on_left else "right",
            va="bottom",
            fontsize=8,
        )
    for row, clique in enumerate(cliques):
        low, high = test.mean_ranks[clique[0]], test.mean_ranks[clique[-1]]
        y = -0.12 - 0.2 * row
        axis.hlines(y, low - 0.03, high + 0.03, color="black", linewidth=3)
    axis.set_title(title, fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(figure)
    return path
