"""The report's figures with 15 methods: every file is written, and the styles stay apart on
screen and in greyscale print."""

import itertools

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from benchmark.evaluation.metrics import classification_metrics
from benchmark.reporting import figures
from benchmark.reporting.report import write_report
from benchmark.reporting.theme import GREY_DELTA, luma, method_styles
from benchmark.results import Cell, write_json_atomic

# 15 rows as a paper-profile run has them: 12 SSL methods, scratch, a control and a baseline.
SKILL = {
    "scratch": 0.3, "residual": 0.5, "simclr": 0.6, "byol": 0.7, "moco": 0.65,
    "drasclr": 0.8, "spark": 0.75, "mae": 0.55, "simsiam": 0.45, "vicreg": 0.62,
    "barlow": 0.58, "dino": 0.68, "rotation": 0.35, "supervised": 1.2,
    "intensity_features": 0.2,
}  # fmt: skip
ROLES = {"supervised": "positive_control", "intensity_features": "baseline"}
LABELS = {"spark": "spark (mask 8^3)"}
FINDINGS = ["polyp", "retention_cyst", "mucosal_thickening;polyp"]


def write_fake_run(out, protocols=("finetune", "linear"), fractions=(0.1, 0.5, 1.0), folds=2):
    """Cell files (with predictions) and loss tables of a 15-method run; a method's scores
    separate the classes by its ``SKILL``, more so with more labels."""
    rng = np.random.default_rng(0)
    volumes = []
    for subject, side in itertools.product(range(24), "LR"):
        label = int(rng.random() < 0.5)
        finding = FINDINGS[rng.integers(3)] if label else ""
        volumes.append(
            {"subject_id": f"S{subject:02d}", "side": side, "label": label, "pathology": finding}
        )
    labels = np.array([v["label"] for v in volumes])
    for method, protocol, fraction, fold in itertools.product(
        SKILL, protocols, fractions, range(folds)
    ):
        scores = labels * SKILL[method] * (0.5 + fraction) + rng.random(len(labels))
        record = {
            "method": method, "method_label": LABELS.get(method, method),
            "role": ROLES.get(method, "method"), "protocol": protocol, "fraction": fraction,
            "fold": fold, "seed": 0, "status": "done", "threshold": 0.75,
            "metrics": classification_metrics(torch.tensor(scores), torch.tensor(labels), 0.75),
            "prevalence": float(labels.mean()),
            "predictions": [{**v, "score": float(s)} for v, s in zip(volumes, scores, strict=True)],
            "backbone": "3D ResNet18 (narrow), widths 8/8/16/32", "profile": "smoke",
        }  # fmt: skip
        write_json_atomic(Cell(method, protocol, fraction, fold, 0).path(out), record)
    for method in SKILL:
        if ROLES.get(method) is None and method != "scratch":
            epochs = np.arange(6)
            losses = pd.DataFrame(
                {"epoch": epochs, "train_loss": 2 / (1 + epochs), "val_loss": 2.2 / (1 + epochs)}
            )
            (out / "pretrain" / method).mkdir(parents=True)
            losses.to_csv(out / "pretrain" / method / "losses.csv", index=False)


@pytest.fixture(scope="module")
def fifteen_methods(tmp_path_factory):
    out = tmp_path_factory.mktemp("fifteen-methods")
    write_fake_run(out)
    write_report(out, replicates=40)
    return out


def test_a_fifteen_method_report_writes_every_figure(fifteen_methods):
    names = [f"{m}_vs_fraction.png" for m in ("auprc", "auroc", "f1")]
    names += ["pr_curves_f0.1.png", "pretraining_losses.png", "summary.png", "summary.pdf"]
    for name in names:
        assert (fifteen_methods / "figures" / name).stat().st_size > 10_000, name
    report = (fifteen_methods / "report.md").read_text()
    assert all(f"figures/{name}" in report for name in names if name.endswith(".png"))
    # small multiples: one row per method besides the reference (residual), two protocols
    width, height = Image.open(fifteen_methods / "figures" / "auprc_vs_fraction.png").size
    assert height > 2 * width


def test_fifteen_methods_keep_apart_in_colour_and_in_greyscale():
    styles = method_styles(list(SKILL), ROLES, LABELS)
    triples = {(s.colour, s.marker, s.dashes) for s in styles.values()}
    assert len(triples) == len(SKILL)
    for (a, first), (b, second) in itertools.combinations(styles.items(), 2):
        if (first.marker, first.dashes) == (second.marker, second.dashes):
            assert abs(luma(first.colour) - luma(second.colour)) >= GREY_DELTA, (a, b)
    assert styles["scratch"].colour[0] == styles["scratch"].colour[1] == styles["scratch"].colour[2]
    assert styles["supervised"].dashes and styles["supervised"].hatch
    assert styles["intensity_features"].dashes != styles["supervised"].dashes
    assert styles["intensity_features"].hatch not in (None, styles["supervised"].hatch)
    assert styles["supervised"].label == "supervised (positive control)"
    assert styles["spark"].label == "spark (mask 8^3)"


def test_the_summary_highlights_the_reference_the_best_three_and_the_controls():
    rows = pd.DataFrame(
        {"method": list(SKILL), "mean": list(SKILL.values()), "n": 1}
    )  # skill as the mean
    shown = figures.highlighted_methods(rows, "residual", ROLES)
    assert sorted(shown) == sorted(["residual", "drasclr", "spark", "byol", *ROLES])
    few = rows[rows["method"].isin(["scratch", "simclr", "byol"])]
    assert figures.highlighted_methods(few, "scratch", ROLES) == ["scratch", "simclr", "byol"]
