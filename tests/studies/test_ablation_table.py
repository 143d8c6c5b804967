"""Ablation tables show validation AUPRC (to choose by) beside test AUPRC."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score

from benchmark.results import Cell, write_json_atomic
from benchmark.studies.ablation import Variant, ablation_table


def _predictions(rng, signal, volumes=20):
    labels = np.arange(volumes) % 2
    scores = signal * labels + rng.normal(0, 1, volumes)
    return [
        {"subject_id": f"S{v:02d}", "side": "L", "label": int(y), "pathology": "", "score": s}
        for v, (y, s) in enumerate(zip(labels, scores, strict=True))
    ]


def test_validation_auprc_is_computed_from_the_cells_and_chooses_the_bold_variant(tmp_path):
    """`small` validates better but tests worse than `large`: bold follows validation."""
    rng = np.random.default_rng(0)
    variants = [Variant("cells", (("method.spark.mask_cell_size", size),)) for size in (8, 16)]
    folders, expected = {}, {}
    for variant, (validation_signal, test_signal) in zip(variants, [(3.0, 0.5), (0.0, 3.0)]):
        size = variant.settings[0][1]
        folders[variant] = tmp_path / "variants" / f"mask_cell_size={size}"
        for fold in range(2):
            validation = _predictions(rng, validation_signal)
            frame = pd.DataFrame(validation)
            expected.setdefault(size, []).append(
                average_precision_score(frame["label"], frame["score"])
            )
            test = pd.DataFrame(_predictions(rng, test_signal))
            write_json_atomic(
                Cell("spark", "linear", 0.5, fold, 0).path(folders[variant]),
                {
                    "method": "spark",
                    "protocol": "linear",
                    "fraction": 0.5,
                    "fold": fold,
                    "seed": 0,
                    "status": "done",
                    "metrics": {"auprc": average_precision_score(test["label"], test["score"])},
                    "validation_predictions": validation,
                },
            )
    table = ablation_table("spark", variants, folders, tmp_path).set_index("mask_cell_size")
    for size in (8, 16):
        assert table.loc[size, "validation_auprc_mean"] == pytest.approx(np.mean(expected[size]))
        assert table.loc[size, "validation_auprc_std"] == pytest.approx(
            np.std(expected[size], ddof=1)
        )
    assert table.loc[8, "validation_auprc_mean"] > table.loc[16, "validation_auprc_mean"]
    assert table.loc[8, "auprc_mean"] < table.loc[16, "auprc_mean"]
    markdown = (tmp_path / "tables" / "ablation_spark.md").read_text()
    assert "| mask_cell_size | validation AUPRC 0.5 | test AUPRC 0.5 |" in markdown
    rows = {line.split(" | ")[0].strip("| "): line for line in markdown.splitlines() if "|" in line}
    assert rows["8"].count("**") == 2 and "**" not in rows["16"]
    assert "Choose a setting by validation AUPRC" in markdown
    csv = pd.read_csv(tmp_path / "tables" / "ablation_spark.csv")
    assert {"validation_auprc_mean", "validation_auprc_std", "auprc_mean"} <= set(csv.columns)
