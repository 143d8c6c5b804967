"""Reports that say what a run can conclude: ties with the best, ranks with a critical-difference
diagram, and the verdict report.md opens with. Fake runs go through ``write_report``."""

import itertools

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import friedmanchisquare

from benchmark.evaluation.metrics import classification_metrics
from benchmark.reporting.ranks import friedman_test, nemenyi_q, rank_tests
from benchmark.reporting.report import write_report
from benchmark.results import Cell, write_json_atomic

SUBJECTS = 30
ROLES = {"supervised": "positive_control", "intensity_features": "baseline"}


def _labels() -> np.ndarray:
    return (np.arange(2 * SUBJECTS) % 3 == 0).astype(int)


def write_run(out, signals, fractions=(0.1, 1.0), folds=3, seeds=(0, 1, 2)):
    """One finetune cell per method x fraction x fold x seed; a volume scores
    ``signal * label + noise`` (noise drawn per cell), so equal signals tie within noise."""
    labels = _labels()
    volumes = [(f"S{v // 2:02d}", "LR"[v % 2], int(y)) for v, y in enumerate(labels)]
    rng = np.random.default_rng(0)
    for (method, signal), fraction, fold, seed in itertools.product(
        signals.items(), fractions, range(folds), seeds
    ):
        scores = signal * labels + rng.normal(0, 1, len(labels))
        write_json_atomic(
            Cell(method, "finetune", fraction, fold, seed).path(out),
            {
                "method": method,
                "role": ROLES.get(method, "method"),
                "protocol": "finetune",
                "fraction": fraction,
                "fold": fold,
                "seed": seed,
                "status": "done",
                "metrics": classification_metrics(torch.tensor(scores), torch.tensor(labels), 0.5),
                "prevalence": float(labels.mean()),
                "threshold": 0.5,
                "predictions": [
                    {"subject_id": s, "side": side, "label": y, "pathology": "", "score": float(x)}
                    for (s, side, y), x in zip(volumes, scores, strict=True)
                ],
                "backbone": "3D ResNet18 (narrow), widths 8/8/16/32",
                "profile": "smoke",
            },
        )
    return out


def _rows(markdown: str) -> dict[str, str]:
    return {line.split(" | ")[0].strip("| "): line for line in markdown.splitlines() if "|" in line}


@pytest.fixture(scope="module")
def tied_run(tmp_path_factory):
    """`byol` and `simclr` equally good (tied within noise), `moco` scores noise; the
    positive control and the baseline score best of all and must never be bold."""
    out = tmp_path_factory.mktemp("tied")
    signals = {"scratch": 0.0, "byol": 2.0, "simclr": 2.0, "moco": 0.0}
    write_run(out, {**signals, "supervised": 4.0, "intensity_features": 4.0})
    write_report(out, replicates=200)
    return out


def test_methods_tied_with_the_best_are_bold_and_a_clearly_worse_one_and_controls_are_not(
    tied_run,
):
    markdown = (tied_run / "tables" / "auprc.md").read_text()
    rows = _rows(markdown)
    assert rows["byol"].count("**") == 4 and rows["simclr"].count("**") == 4  # both fractions
    assert "**" not in rows["moco"]
    assert not any("**" in line for name, line in rows.items() if "control" in name)
    assert not any("**" in line for name, line in rows.items() if "baseline" in name)
    assert "Bold: tied with the best" in markdown and "cannot tell them apart" in markdown
    table = pd.read_csv(tied_run / "tables" / "auprc.csv")
    tied = table.groupby("method")["tied_with_best"].all()
    assert tied["byol"] and tied["simclr"] and not tied["moco"] and not tied["supervised"]
    assert set(table.loc[table["method"] == "moco", "tie_test"]) == {"paired test"}
    assert "\\textbf" in (tied_run / "tables" / "auprc.tex").read_text()


def test_the_verdict_opens_the_report_and_says_the_control_was_detected(tied_run):
    report = (tied_run / "report.md").read_text()
    assert report.index("## What this run can conclude") < report.index("## AUPRC")
    verdict = report.split("## What this run can conclude")[1].split("\n## ")[0]
    assert "finetune, fraction 0.1: positive control **detected**" in verdict
    assert "supervised − scratch AUPRC +" in verdict and "95% CI" in verdict
    assert "cannot rank" not in verdict and "could detect" in verdict
    assert "Significant differences from scratch" in verdict
    assert "  - byol, finetune, fraction 0.1: +" in verdict
    assert "  - supervised (positive control), finetune, fraction 0.1: +" in verdict
    assert "moco, finetune" not in verdict
    assert "pretraining variation was not sampled" not in verdict  # three pretraining seeds


def test_ranks_table_and_critical_difference_diagram_are_written_and_linked(tied_run):
    ranks = pd.read_csv(tied_run / "tables" / "ranks.csv")
    assert set(ranks["method"]) == {"scratch", "byol", "simclr", "moco"}  # controls not ranked
    assert (ranks["fractions"] == 2).all() and (ranks["methods"] == 4).all()
    assert ranks["mean_rank"].sum() == pytest.approx(4 * 5 / 2)
    figure = tied_run / "figures" / "ranks_finetune.png"
    assert figure.stat().st_size > 10_000
    report = (tied_run / "report.md").read_text()
    assert "](figures/ranks_finetune.png)" in report and "Nemenyi critical difference" in report
    assert "\\begin{tabular}" in (tied_run / "tables" / "ranks.tex").read_text()


def test_a_control_that_is_not_detected_says_the_run_cannot_rank_methods(tmp_path):
    write_run(
        tmp_path,
        {"scratch": 0.0, "supervised": 0.0, "byol": 0.0},
        fractions=(0.1,),
        folds=5,
        seeds=(0,),
    )
    write_report(tmp_path, replicates=100)
    report = (tmp_path / "report.md").read_text()
    assert "positive control **not detected**" in report
    assert "This run cannot rank methods in the finetune protocol" in report
    assert "One pretraining seed: pretraining variation was not sampled" in report
    assert "No ranks: 2 competing method(s) over 1 label fraction(s)" in report
    assert not (tmp_path / "figures" / "ranks_finetune.png").exists()


def test_a_run_without_supervised_says_the_positive_control_is_absent(tmp_path):
    write_run(tmp_path, {"scratch": 0.0, "byol": 1.0}, fractions=(0.1, 0.5), folds=2, seeds=(0,))
    write_report(tmp_path, replicates=100)
    report = (tmp_path / "report.md").read_text()
    assert "finetune: **positive control absent** (no finished supervised cells)" in report
    assert "detected" not in report.split("## What this run can conclude")[1].split("\n## ")[0]


def test_friedman_statistic_equals_scipy_and_nemenyi_q_equals_demsar_table():
    rng = np.random.default_rng(1)
    values = pd.DataFrame(rng.random((6, 5)), columns=list("abcde"))
    values.iloc[0, 1] = values.iloc[0, 2]  # a tie within a block
    values.iloc[3, :] = 0.5  # a block of all ties
    test = friedman_test(values)
    expected = friedmanchisquare(*values.to_numpy().T)
    assert test.friedman == pytest.approx(expected.statistic)
    assert test.friedman_p == pytest.approx(expected.pvalue)
    demsar = [1.960, 2.343, 2.569, 2.728, 2.850, 2.949, 3.031, 3.102, 3.164]
    assert [nemenyi_q(k) for k in range(2, 11)] == pytest.approx(demsar, abs=1e-3)
    assert test.critical_difference == pytest.approx(2.728 * np.sqrt(5 * 6 / (6 * 6)), abs=1e-3)


def test_cliques_join_methods_within_the_critical_difference():
    ordered = pd.DataFrame(
        [[4.0, 3.0, 2.0, 1.0]] * 10, columns=["best", "second", "third", "worst"]
    )
    test = friedman_test(ordered)  # every block agrees: ranks 1, 2, 3, 4; CD = 1.48
    assert list(test.mean_ranks) == [1.0, 2.0, 3.0, 4.0]
    assert test.friedman_p < 0.001
    assert test.cliques() == [("best", "second"), ("second", "third"), ("third", "worst")]


def test_ranks_need_two_methods_and_two_fractions():
    summary = pd.DataFrame(
        {
            "protocol": "linear",
            "method": ["a", "a", "b"],
            "fraction": [0.1, 0.5, 0.1],
            "mean": [0.6, 0.7, 0.5],
            "n": [3, 3, 3],
            "role": "method",
        }
    )
    tests, reasons = rank_tests(summary, ["linear"])
    assert not tests and "2 competing method(s) over 1 label fraction(s)" in reasons["linear"]
