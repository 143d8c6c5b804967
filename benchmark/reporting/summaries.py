"""The numbers of a report, as DataFrames: entries with bootstrap CIs, paired comparisons,
per-finding results and localisation (``benchmark.reporting.statistics`` defines the statistics).

An *entry* is one method x protocol x label fraction: the mean and std of its finished cells'
stored metrics, ``n`` finished, ``failed`` and ``missing`` cells, and the 95 % CI of the mean
by bootstrap over test subjects. A *comparison* pairs an entry with the reference method's
entry of the same protocol and fraction over the fold x seed cells both finished, and tests the
difference against training and test-subject variation (``benchmark.reporting.comparison``).
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from benchmark.evaluation.metrics import weighted_auroc, weighted_average_precision, weighted_f1
from benchmark.reporting.collect import KEY, RunResults
from benchmark.reporting.comparison import PairedTest, mean_difference, paired_test
from benchmark.reporting.statistics import (
    holm,
    paired_bootstrap_p,
    percentile_interval,
    subject_draws,
    volume_weights,
)

METRICS = ("auprc", "auroc", "f1")
ENTRY = ["protocol", "method", "fraction"]
# What a row is when it is not a competing method (``SSLMethod.role``, recorded in every cell
# file): tables and figures list such rows after the methods, mark them with these words and
# never bold them as best.
ROLE_LABELS = {
    "positive_control": "positive control: uses labels beyond the cell",
    "baseline": "baseline: fixed features, nothing learned",
}


def method_roles(cells: pd.DataFrame) -> dict[str, str]:
    """Each method's role (``method`` for cell files written before roles were recorded)."""
    if "role" not in cells:
        return {}
    return dict(zip(cells["method"], cells["role"].fillna("method")))


def role_suffix(role: str | None) -> str:
    """`` (positive control: ...)`` for a marked role, else empty."""
    return f" ({ROLE_LABELS[role]})" if role in ROLE_LABELS else ""


def findings(pathologies: pd.Series) -> list[str]:
    """Every finding named in ``;``-separated pathologies, sorted."""
    return sorted({word for text in pathologies for word in str(text).split(";") if word})


def has_finding(pathologies: pd.Series, finding: str) -> np.ndarray:
    """Which ``;``-separated pathologies include ``finding``."""
    return np.array([finding in str(text).split(";") for text in pathologies], dtype=bool)


@dataclass
class FixedTestSet:
    """The test volumes every cell scored, in one fixed order, and their subjects."""

    volumes: pd.DataFrame  # subject_id, side, label, pathology
    subject_of_volume: np.ndarray  # [V] index into the sorted test subjects

    @property
    def n_subjects(self) -> int:
        return int(self.volumes["subject_id"].nunique())

    @property
    def findings(self) -> list[str]:
        """Every finding named in the test set's pathologies (sorted)."""
        return findings(self.volumes["pathology"])

    @classmethod
    def of(cls, records: dict[tuple, dict]) -> FixedTestSet | None:
        """The union of the finished cells' test predictions; None when none has any."""
        rows = {}
        for record in records.values():
            for p in record.get("predictions") or []:
                rows.setdefault((p["subject_id"], p["side"]), (p["label"], p.get("pathology")))
        if not rows:
            return None
        volumes = pd.DataFrame(
            [(s, side, label, finding or "") for (s, side), (label, finding) in rows.items()],
            columns=["subject_id", "side", "label", "pathology"],
        ).sort_values(["subject_id", "side"], ignore_index=True)
        subjects = {s: i for i, s in enumerate(sorted(volumes["subject_id"].unique()))}
        return cls(volumes, volumes["subject_id"].map(subjects).to_numpy())

    def align(self, record: dict) -> tuple[np.ndarray, np.ndarray]:
        """A cell's scores in this order (0 where absent) and which volumes it scored."""
        position = {k: i for i, k in enumerate(zip(self.volumes.subject_id, self.volumes.side))}
        scores, present = np.zeros(len(self.volumes)), np.zeros(len(self.volumes), dtype=bool)
        for p in record.get("predictions") or []:
            index = position[(p["subject_id"], p["side"])]
            scores[index], present[index] = p["score"], True
        return scores, present

    @property
    def has_pathologies(self) -> bool:
        return bool(self.findings)


def cell_metric(
    metric: str, scores: np.ndarray, labels: np.ndarray, weights: np.ndarray, threshold: float
) -> np.ndarray:
    """A cell's metric under each row of ``weights`` ``[B, V]``."""
    scores, labels, weights = (torch.as_tensor(a) for a in (scores, labels, weights))
    if metric == "auprc":
        return weighted_average_precision(scores, labels, weights).numpy()
    if metric == "auroc":
        return weighted_auroc(scores, labels, weights).numpy()
    return weighted_f1(scores, labels, threshold, weights).numpy()


def decision_threshold(record: dict) -> float:
    """The cell's stored validation threshold; 0.5 only when the cell stored none (a stored
    0.0, calling every volume anomalous, is a real optimum, e.g. for kNN scores of exactly 0)."""
    threshold = record.get("threshold")
    return 0.5 if threshold is None else float(threshold)


@contextmanager
def one_thread():
    """Torch on one thread inside: a cell's ``[B, V]`` arrays are too small for intra-op
    threads to pay off (on a busy 2-core machine one AUPRC call of 4,800 x 36 took 17 ms on one
    thread and 275 ms on two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass
class Bootstrap:
    """Test-subject resampling shared by every cell of a report, and each cell's replicates."""

    test_set: FixedTestSet
    weights: np.ndarray  # [B, V]
    replicates: dict[tuple, dict[str, np.ndarray]]  # cell key -> metric -> [B]

    @classmethod
    def run(
        cls,
        results: RunResults,
        test_set: FixedTestSet,
        replicates: int,
        seed: int,
        metrics: tuple[str, ...] = METRICS,
    ) -> Bootstrap:
        """Each scored cell's ``metrics`` on the same ``replicates`` test-subject resamples."""
        draws = subject_draws(test_set.n_subjects, replicates, seed)
        weights = volume_weights(draws, test_set.subject_of_volume)
        labels = test_set.volumes["label"].to_numpy(float)
        per_cell = {}
        with one_thread():
            for key, record in results.records.items():
                if not record.get("predictions"):
                    continue
                scores, present = test_set.align(record)
                threshold = decision_threshold(record)
                per_cell[key] = {
                    m: cell_metric(m, scores, labels, weights * present, threshold) for m in metrics
                }
        return cls(test_set, weights, per_cell)

    def entry(self, keys: list[tuple], metric: str) -> np.ndarray | None:
        """Replicates ``[B]`` of the mean over these cells; None if any cell has none."""
        if not keys or any(k not in self.replicates for k in keys):
            return None
        return nanmean_rows(np.stack([self.replicates[k][metric] for k in keys]))


def nanmean_rows(stack: np.ndarray) -> np.ndarray:
    """Column means of ``[cells, B]`` ignoring NaN (NaN where a column has no value)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(stack, axis=0)


def _keys(rows: pd.DataFrame) -> list[tuple]:
    return [tuple(row) for row in rows[KEY].itertuples(index=False)]


def entries(
    cells: pd.DataFrame, metric: str, bootstrap: Bootstrap | None, level: float = 0.95
) -> pd.DataFrame:
    """One row per method x protocol x fraction: ``method, fraction, mean, std, n, failed,
    missing, ci_low, ci_high, prevalence, protocol, role``."""
    roles = method_roles(cells)
    rows = []
    for (protocol, method, fraction), group in cells.groupby(ENTRY, sort=True):
        done = group[group["status"] == "done"]
        values = pd.to_numeric(done[metric], errors="coerce") if len(done) else pd.Series([])
        replicates = bootstrap.entry(_keys(done), metric) if bootstrap else None
        low, high = (
            percentile_interval(replicates, level)
            if replicates is not None
            else (
                np.nan,
                np.nan,
            )
        )
        rows.append(
            {
                "method": method,
                "fraction": fraction,
                "mean": values.mean() if len(values) else np.nan,
                "std": values.std() if len(values) > 1 else np.nan,
                "n": int(values.notna().sum()),
                "failed": int((group["status"] == "failed").sum()),
                "missing": int((group["status"] == "missing").sum()),
                "ci_low": low,
                "ci_high": high,
                "prevalence": pd.to_numeric(done["prevalence"], errors="coerce").mean(),
                "protocol": protocol,
                "role": roles.get(method, "method"),
            }
        )
    return pd.DataFrame(rows)


def default_reference(cells: pd.DataFrame, requested: str | None) -> str | None:
    """``requested``, else ``residual`` when it has finished cells, else ``scratch``, else None."""
    finished = set(cells.loc[cells["status"] == "done", "method"])
    if requested is not None:
        return requested
    return next((m for m in ("residual", "scratch") if m in finished), None)


COMPARISON_COLUMNS = [
    "protocol", "fraction", "method", "reference", "pairs", "paired_seeds", "family", "diff",
    "diff_low", "diff_high", "se", "se_training", "se_test", "df", "p", "p_holm", "significant",
    "mdd", "p_test_only", "p_test_only_holm",
]  # fmt: skip


def pretraining_seeds(cells: pd.DataFrame) -> pd.Series:
    """The pretraining seed of each cell: ``pretraining_seed`` where cells record it, else
    ``seed`` (every method pretrains once per seed of ``splits.seeds``)."""
    if "pretraining_seed" in cells:
        return cells["pretraining_seed"].fillna(cells["seed"])
    return cells["seed"]


def paired_comparisons(
    cells: pd.DataFrame,
    metric: str,
    pairs: list[tuple[str, str]],
    bootstrap: Bootstrap | None,
    alpha: float = 0.05,
    level: float = 0.95,
) -> pd.DataFrame:
    """Each ``(method, reference)`` pair per protocol and label fraction, over the fold x seed
    cells both finished (``benchmark.reporting.comparison``).

    The family of Holm's correction is the pairs of one protocol and fraction that have a
    paired cell; its size is ``family``. Columns (``COMPARISON_COLUMNS``): ``pairs`` (paired
    cells) and ``paired_seeds`` (their pretraining seeds); ``diff`` (mean difference, method
    minus reference), its ``level`` CI ``diff_low, diff_high``, standard error ``se`` (from
    ``se_training`` and ``se_test``, added in quadrature) and degrees of freedom ``df``; ``p`` and
    ``p_holm``; ``significant`` (``p_holm < alpha``); ``mdd``, the difference detectable with
    80 % power at ``alpha / family`` (Holm's first step); ``p_test_only`` and
    ``p_test_only_holm``, the paired bootstrap over test subjects alone (conditional on the
    trained models).
    """
    done = cells[cells["status"] == "done"].assign(
        value=lambda frame: pd.to_numeric(frame[metric], errors="coerce"),
        pretraining=pretraining_seeds,
    )
    rows = []
    for (protocol, fraction), group in done.groupby(["protocol", "fraction"], sort=True):
        by_method = {m: own.set_index(["fold", "seed"]) for m, own in group.groupby("method")}
        family = []
        for method, reference in pairs:
            if method in by_method and reference in by_method:
                own, base = by_method[method], by_method[reference]
                index = sorted(set(own.index) & set(base.index))
                if index:
                    family.append((method, reference, own.loc[index], base.loc[index]))
        for method, reference, own, base in family:
            keys = [(m, protocol, fraction) for m in (method, reference)]
            test, p_test_only = _paired_test(
                metric, keys, own, base, bootstrap, alpha / len(family), level
            )
            rows.append(
                {
                    "protocol": protocol,
                    "fraction": fraction,
                    "method": method,
                    "reference": reference,
                    "pairs": test.components.cells,
                    "paired_seeds": test.components.seeds,
                    "family": len(family),
                    "diff": test.difference,
                    "diff_low": test.low,
                    "diff_high": test.high,
                    "se": test.standard_error,
                    "se_training": np.sqrt(test.components.training),
                    "se_test": np.sqrt(test.components.test),
                    "df": test.df,
                    "p": test.p,
                    "mdd": test.mdd,
                    "p_test_only": p_test_only,
                }
            )
    table = pd.DataFrame(rows, columns=COMPARISON_COLUMNS)
    for column in ("p", "p_test_only"):
        table[f"{column}_holm"] = np.nan
        for _, group in table.groupby(["protocol", "fraction"]):
            table.loc[group.index, f"{column}_holm"] = holm(group[column].to_numpy(float))
    table["significant"] = table["p_holm"] < alpha
    return table


def _paired_test(
    metric: str,
    entries: list[tuple],
    own: pd.DataFrame,
    base: pd.DataFrame,
    bootstrap: Bootstrap | None,
    alpha: float,
    level: float,
) -> tuple[PairedTest, float]:
    """One pair's test (training and test subjects) and its test-subject-only bootstrap p;
    ``entries``: the (method, protocol, fraction) of ``own`` and of ``base``."""
    differences = own["value"].to_numpy(float) - base["value"].to_numpy(float)
    seeds = own["pretraining"].to_numpy()
    keys = [[(*entry, *cell) for cell in own.index] for entry in entries]
    replicates, p_test_only = np.full(0, np.nan), np.nan
    if bootstrap is not None and all(k in bootstrap.replicates for k in keys[0] + keys[1]):
        cell_differences = np.stack(
            [
                bootstrap.replicates[k][metric] - bootstrap.replicates[b][metric]
                for k, b in zip(*keys, strict=True)
            ]
        )
        replicates = mean_difference(cell_differences, seeds)
        p_test_only = paired_bootstrap_p(mean_difference(differences, seeds), replicates)
    subjects = bootstrap.test_set.n_subjects if bootstrap is not None else 0
    test = paired_test(differences, seeds, replicates, subjects, alpha, level)
    return test, p_test_only


def comparisons(
    cells: pd.DataFrame,
    metric: str,
    reference: str | None,
    bootstrap: Bootstrap | None,
    alpha: float = 0.05,
    level: float = 0.95,
) -> pd.DataFrame:
    """Every other finished method against ``reference`` (``paired_comparisons``; the family
    of a protocol and fraction is the methods vs the reference). No rows without a reference."""
    methods = sorted(set(cells.loc[cells["status"] == "done", "method"]) - {reference})
    pairs = [(method, reference) for method in methods] if reference is not None else []
    return paired_comparisons(cells, metric, pairs, bootstrap, alpha, level)


def tied_with_best(
    cells: pd.DataFrame,
    summary: pd.DataFrame,
    metric: str,
    bootstrap: Bootstrap | None,
    alpha: float = 0.05,
    level: float = 0.95,
) -> pd.DataFrame:
    """Which competing methods (role ``method``) are not significantly worse than the best
    mean of their column (one protocol and fraction of ``summary``, ``entries``' rows).

    Every other competing method of the column is compared with the best one by
    ``paired_comparisons`` (Holm over that column's pairs). A method is tied when the test
    does not find it worse; when the pair's test cannot run (a single paired cell) but other
    pairs of the column could, when its mean is within their median minimum detectable
    difference of the best; with neither (no predictions, one cell per method), only the best. Columns ``protocol, method, fraction, tied, tie_test`` with
    ``tie_test``: ``best``, ``paired test``, ``within MDD`` or ``untested``."""
    competing = summary[(summary["role"] == "method") & (summary["n"] > 0)]
    rows = []
    for (protocol, fraction), column in competing.groupby(["protocol", "fraction"], sort=True):
        best = column.loc[column["mean"].idxmax(), "method"]
        rows.append((protocol, best, fraction, True, "best"))
        pairs = [(m, best) for m in column["method"] if m != best]
        here = cells[(cells["protocol"] == protocol) & (cells["fraction"] == fraction)]
        tests = paired_comparisons(here, metric, pairs, bootstrap, alpha, level)
        means = column.set_index("method")["mean"]
        mdd = tests.loc[np.isfinite(tests["p_holm"].to_numpy(float)), "mdd"].median()
        for method in column["method"]:
            if method == best:
                continue
            found = tests[tests["method"] == method]
            test = found.iloc[0] if len(found) else None
            if test is not None and np.isfinite(test["p_holm"]):
                tied = not (test["significant"] and test["diff"] < 0)
                rows.append((protocol, method, fraction, tied, "paired test"))
            elif np.isfinite(mdd):
                tied = bool(means[best] - means[method] <= mdd)
                rows.append((protocol, method, fraction, tied, "within MDD"))
            else:
                rows.append((protocol, method, fraction, False, "untested"))
    return pd.DataFrame(rows, columns=["protocol", "method", "fraction", "tied", "tie_test"])


# Resamples for a confidence interval that no test uses (percentile CIs are stable at 1,000).
DESCRIPTIVE_RESAMPLES = 1000


def pathology_results(
    results: RunResults, bootstrap: Bootstrap, level: float = 0.95
) -> pd.DataFrame:
    """Normal vs each finding, per method x protocol x fraction.

    For finding F, a cell's test volumes are reduced to the normal ones and those whose
    pathology includes F; ``auprc`` ranks F against normal, ``recall`` is the share of F
    volumes at or above the cell's threshold (for ``finding == "normal"``: the share of
    normal volumes below it, i.e. specificity). Mean and std over cells, 95 % CI of the mean by
    the report's subject bootstrap, ``volumes`` with the finding and the subset's
    ``prevalence`` (the AUPRC of a random ranking).
    """
    test_set = bootstrap.test_set
    volumes = test_set.volumes
    labels = volumes["label"].to_numpy(float)
    normal = labels == 0
    subsets = {"normal": normal}
    for finding in test_set.findings:
        subsets[finding] = has_finding(volumes["pathology"], finding)
    per_cell = []
    for key, record in results.records.items():
        if not record.get("predictions"):
            continue
        scores, present = test_set.align(record)
        threshold = decision_threshold(record)
        # [B, V]: replicate b's weight of each volume. Per-finding results carry no test, only
        # CIs: the first DESCRIPTIVE_RESAMPLES replicates, not the many Holm's family needs.
        weights = bootstrap.weights[:DESCRIPTIVE_RESAMPLES] * present
        called = scores >= threshold
        for finding, members in subsets.items():
            keep = (members | normal) if finding != "normal" else normal
            target = members & present
            if not target.any():
                continue
            correct = called if finding != "normal" else ~called
            with np.errstate(invalid="ignore", divide="ignore"):  # weighted counts: one BLAS
                recall = (weights @ (target & correct)) / (weights @ target)  # product each
            auprc = (
                weighted_average_precision(
                    torch.as_tensor(scores[keep]),
                    torch.as_tensor(labels[keep]),
                    torch.as_tensor(weights[:, keep]),
                ).numpy()
                if finding != "normal"
                else np.full(len(weights), np.nan)
            )
            observed_auprc = (
                float(
                    weighted_average_precision(
                        torch.as_tensor(scores[keep & present]),
                        torch.as_tensor(labels[keep & present]),
                    )[0]
                )
                if finding != "normal"
                else np.nan
            )
            per_cell.append(
                {
                    **dict(zip(KEY, key)),
                    "finding": finding,
                    "auprc": observed_auprc,
                    "recall": float((target & correct).sum() / target.sum()),
                    "auprc_replicates": auprc,
                    "recall_replicates": recall,
                    "volumes": int(target.sum()),
                    "prevalence": float(target.sum() / (keep & present).sum())
                    if finding != "normal"
                    else np.nan,
                }
            )
    if not per_cell:
        return pd.DataFrame()
    frame = pd.DataFrame(per_cell)
    rows = []
    for (protocol, method, fraction, finding), group in frame.groupby(
        [*ENTRY, "finding"], sort=False
    ):
        row = {"protocol": protocol, "method": method, "fraction": fraction, "finding": finding}
        for name in ("auprc", "recall"):
            row[f"{name}_mean"] = group[name].mean()
            row[f"{name}_std"] = group[name].std() if len(group) > 1 else np.nan
            replicates = nanmean_rows(np.stack(group[f"{name}_replicates"].to_list()))
            row[f"{name}_ci_low"], row[f"{name}_ci_high"] = percentile_interval(replicates, level)
        row.update(
            cells=len(group),
            volumes=int(group["volumes"].max()),
            prevalence=group["prevalence"].mean(),
        )
        rows.append(row)
    order = {f: i for i, f in enumerate(subsets)}
    table = pd.DataFrame(rows)
    table["order"] = table["finding"].map(order)
    return table.sort_values([*ENTRY, "order"]).drop(columns="order").reset_index(drop=True)


def localisation_results(results: RunResults) -> pd.DataFrame:
    """Grad-CAM against the masks per method x protocol x fraction (``finding == "all"``) and
    per finding: mean and std over cells of the per-cell mean voxel AUPRC and pointing-game
    hit rate, the chance level (mean mask share of the volume), volumes and cells."""
    per_cell = []
    for key, record in results.records.items():
        localisation = record.get("localisation")
        if not localisation or not localisation.get("volumes"):
            continue
        volumes = pd.DataFrame(localisation["volumes"])
        groups = {"all": volumes}
        for finding in findings(volumes["pathology"]):
            groups[finding] = volumes[has_finding(volumes["pathology"], finding)]
        for finding, members in groups.items():
            per_cell.append(
                {
                    **dict(zip(KEY, key)),
                    "finding": finding,
                    "voxel_auprc": members["voxel_auprc"].mean(),
                    "pointing_game": members["pointing_hit"].mean(),
                    "chance": members["mask_fraction"].mean(),
                    "volumes": len(members),
                    "stage": localisation.get("stage"),
                }
            )
    if not per_cell:
        return pd.DataFrame()
    frame = pd.DataFrame(per_cell)
    table = frame.groupby([*ENTRY, "finding"], sort=False).agg(
        voxel_auprc_mean=("voxel_auprc", "mean"),
        voxel_auprc_std=("voxel_auprc", "std"),
        pointing_game_mean=("pointing_game", "mean"),
        pointing_game_std=("pointing_game", "std"),
        chance=("chance", "mean"),
        volumes=("volumes", "max"),
        cells=("voxel_auprc", "size"),
        stage=("stage", "first"),
    )
    return table.reset_index()
