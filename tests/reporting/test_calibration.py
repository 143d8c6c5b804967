"""The paired comparison calibrated by simulation, through the report's own code path.

Simulated cells hold prediction records like real ones; ``FixedTestSet``, ``Bootstrap.run`` and
``comparisons`` turn them into tests. Each simulated experiment is one label fraction, so one
report resamples many independent experiments at once. A volume's score is
``signal * label + subject difficulty + noise`` with ``signal = 1 + effect + seed term + cell
term``: the seed term is shared by a method's cells of one pretraining seed, the subject
difficulty by both methods (the fixed test set), the rest is drawn per cell.
"""

import itertools

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import binom

from benchmark.evaluation.metrics import weighted_average_precision
from benchmark.reporting.collect import KEY, RunResults
from benchmark.reporting.comparison import power_at
from benchmark.reporting.statistics import resamples_for_family
from benchmark.reporting.summaries import Bootstrap, FixedTestSet, comparisons
from benchmark.reporting.tables import Notation, metric_table, significance_marks

ALPHA = 0.05


def simulated_run(
    experiments, effect, seed, seeds=3, folds=2, subjects=30, seed_sd=0.3, cell_sd=0.2
) -> RunResults:
    """``reference`` and ``candidate`` (``effect`` added to its signal) per experiment."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(2 * subjects) % 3 == 0).astype(float)
    shape = (experiments, 2, seeds, folds)
    signal = (
        1.0
        + np.array([0.0, effect])[:, None, None]
        + rng.normal(0, seed_sd, shape[:3])[..., None]
        + rng.normal(0, cell_sd, shape)
    )
    difficulty = rng.normal(0, 0.7, (experiments, 1, 1, 1, len(labels)))
    scores = signal[..., None] * labels + difficulty + rng.normal(0, 1, (*shape, len(labels)))
    auprc = weighted_average_precision(
        torch.tensor(scores.reshape(-1, len(labels))), torch.tensor(labels)
    ).numpy()
    volumes = [(f"S{v // 2:03d}", "LR"[v % 2], int(label)) for v, label in enumerate(labels)]
    records, rows = {}, []
    for index, (e, m, s, f) in enumerate(itertools.product(*map(range, shape))):
        key = (("reference", "candidate")[m], "finetune", float(e + 1), f, s)
        records[key] = {
            "threshold": 0.5,
            "predictions": [
                {"subject_id": i, "side": side, "label": y, "pathology": "", "score": float(x)}
                for (i, side, y), x in zip(volumes, scores[e, m, s, f], strict=True)
            ],
        }
        rows.append({**dict(zip(KEY, key)), "status": "done", "auprc": auprc[index]})
    return RunResults(None, pd.DataFrame(rows), records, None)


def paired_tests(results: RunResults, replicates=100) -> pd.DataFrame:
    test_set = FixedTestSet.of(results.records)
    bootstrap = Bootstrap.run(results, test_set, replicates, seed=1, metrics=("auprc",))
    return comparisons(results.cells, "auprc", "reference", bootstrap, ALPHA)


def test_two_identical_methods_are_rejected_at_most_alpha_of_the_time():
    tests = paired_tests(simulated_run(300, effect=0.0, seed=0))
    rejected = int((tests["p"] < ALPHA).sum())
    # at most alpha within Monte-Carlo error: not significantly above alpha (one-sided, 0.1 %)
    assert binom.sf(rejected - 1, len(tests), ALPHA) > 0.001, rejected / len(tests)
    # the simulation has training variation the test-set-only bootstrap does not see
    assert (tests["p_test_only"] < ALPHA).mean() > 3 * ALPHA
    assert abs(tests["diff"].mean()) < 2 * tests["diff"].std() / np.sqrt(len(tests))


def test_power_on_a_known_effect_is_what_the_mdd_formula_predicts():
    tests = paired_tests(simulated_run(200, effect=1.2, seed=1))
    effect = tests["diff"].mean()  # the true AUPRC difference, up to Monte-Carlo error
    predicted = np.mean([power_at(effect, se, df, ALPHA) for se, df in zip(tests.se, tests.df)])
    observed = (tests["p"] < ALPHA).mean()
    assert observed == pytest.approx(predicted, abs=0.1)
    assert 0.2 < observed < 0.95  # neither trivial nor hopeless


def test_a_label_scorer_gets_every_mark_and_identical_methods_none_at_paper_family_size():
    """13 methods x 6 fractions, 3 seeds x 2 folds, 18 test subjects: `oracle` scores the
    labels, `scratch` (the reference) and 11 exact copies of it score noise."""
    rng = np.random.default_rng(3)
    labels = (np.arange(36) % 3 == 0).astype(int)
    volumes = [(f"S{v // 2:02d}", "LR"[v % 2], int(y)) for v, y in enumerate(labels)]
    copies = [f"copy{i:02d}" for i in range(11)]
    records, rows = {}, []
    for fraction, fold, seed in itertools.product(
        [0.1, 0.2, 0.4, 0.6, 0.8, 1.0], range(2), range(3)
    ):
        noise = rng.random(36)
        for method, scores in [("scratch", noise), ("oracle", labels + 0.1 * rng.random(36))] + [
            (name, noise) for name in copies
        ]:
            key = (method, "finetune", fraction, fold, seed)
            records[key] = {
                "threshold": 0.5,
                "predictions": [
                    {"subject_id": i, "side": side, "label": y, "pathology": "", "score": x}
                    for (i, side, y), x in zip(volumes, scores, strict=True)
                ],
            }
            auprc = float(weighted_average_precision(torch.tensor(scores), torch.tensor(labels)))
            rows.append({**dict(zip(KEY, key)), "status": "done", "auprc": auprc})
    results = RunResults(None, pd.DataFrame(rows), records, None)
    replicates = resamples_for_family(12, ALPHA)
    bootstrap = Bootstrap.run(
        results, FixedTestSet.of(records), replicates, seed=0, metrics=("auprc",)
    )
    tests = comparisons(results.cells, "auprc", "scratch", bootstrap, ALPHA)
    assert replicates == 4800 and set(tests["family"]) == {12}
    oracle = tests[tests["method"] == "oracle"]
    assert len(oracle) == 6 and oracle["significant"].all()
    assert (oracle["p_test_only_holm"] < ALPHA).all() and (oracle["diff_low"] > 0).all()
    assert (oracle["diff"] > oracle["mdd"]).all()
    identical = tests[tests["method"] != "oracle"]
    assert len(identical) == 66 and not identical["significant"].any()
    assert (identical["p_holm"] == 1).all() and (identical["p_test_only_holm"] == 1).all()
    assert (identical["diff"] == 0).all()
    table = metric_table(
        pd.DataFrame(
            {
                "method": m,
                "fraction": f,
                "mean": 1.0 if m == "oracle" else 0.3,
                "std": 0.0,
                "n": 6,
                "failed": 0,
                "missing": 0,
            }
            for m, f in itertools.product(["scratch", "oracle", *copies], oracle["fraction"])
        ),
        tests,
        "scratch",
        "caption",
        "tab:x",
        Notation(False),
    )
    marks = {row[0]: "".join(row[1:]) for row in table.rows}
    assert marks["oracle"].count("*†") == 6
    assert all("*" not in marks[c] and "†" not in marks[c] for c in copies)
    assert all(significance_marks(row, ALPHA) == "" for _, row in identical.iterrows())
