"""The positive control (``supervised``) and the trivial baseline (``intensity_features``).

``supervised`` trains on the labels it is allowed (the pool's truth, or in fold mode only the
fold's labelled training volumes) and learns; ``intensity_features`` gives the documented
first-order features and is planned for the probe protocols only.
"""

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from benchmark.methods.intensity_features import IntensityFeatures

from benchmark.cli import main
from benchmark.config import load_config
from benchmark.errors import MethodConfigError
from benchmark.orchestration.plan import plan_run
from benchmark.results import read_cells
from benchmark.testing import cross_validated_probe_auprc, pretrain_briefly, smoke_data
from benchmark.training.pretrain import build_method, pretraining_context
from benchmark.training.units import pretraining_units


def _numpy_features(volume: np.ndarray) -> list[float]:
    """The documented 8 statistics of one region, computed independently with numpy."""
    values = volume.ravel().astype(np.float64)
    return [
        *np.percentile(values, [5, 25, 50, 75, 95]),
        values.mean(),
        values.std(),
        float((values < 0.2).mean()),
    ]


def test_intensity_features_match_numpy_on_a_hand_made_volume():
    volume = np.zeros((16, 16, 16), dtype=np.float32)
    volume[:8] = 0.1  # a dark half
    volume[8:] = np.linspace(0.3, 0.9, 8 * 16 * 16, dtype=np.float32).reshape(8, 16, 16)
    volume[6:10, 6:10, 6:10] = 0.05  # the 4^3 centre cube: dark
    volume[7, 7, 7] = 0.5
    features = IntensityFeatures.frozen_features(torch.from_numpy(volume)[None, None])
    expected = _numpy_features(volume) + _numpy_features(volume[6:10, 6:10, 6:10])
    assert features.shape == (1, 16)
    np.testing.assert_allclose(features[0].numpy(), expected, rtol=1e-5, atol=1e-6)
    assert features[0, 15] == pytest.approx(63 / 64)  # centre: all dark but one voxel


def _smoke(methods, overrides=()):
    cfg, data, out = smoke_data(tuple(overrides))
    return load_config("smoke", overrides, methods=methods), data, out


def test_the_plan_has_no_finetune_cells_for_the_baseline():
    cfg, data, out = _smoke(["scratch", "intensity_features"])
    plan = plan_run(cfg, data, out)
    protocols = {m: {c.protocol for c in plan.cells if c.method == m} for m in cfg.methods}
    assert protocols == {
        "scratch": {"finetune", "linear", "knn"},
        "intensity_features": {"linear", "knn"},
    }
    assert plan.units["intensity_features"] == []


def _prepared(cfg, data, out, method="supervised"):
    unit = pretraining_units(cfg, method, out)[0]
    module = build_method(cfg, method)
    context = pretraining_context(cfg, unit, data, torch.device("cpu"), lambda m: None)
    module.prepare(context)
    return unit, module, context


def test_supervised_in_fold_mode_trains_on_the_folds_labelled_training_volumes_only():
    cfg, data, out = _smoke(["supervised"], ["method.supervised.labels=fold"])
    units = pretraining_units(cfg, "supervised", out)
    seeds, folds = cfg.splits.seeds, range(cfg.splits.folds)
    assert [(u.seed, u.fold) for u in units] == [(s, k) for s in seeds for k in folds]
    unit, module, context = _prepared(cfg, data, out)
    train, val = module.pretraining_rows(context)
    np.testing.assert_array_equal(np.sort(train), data.training_rows(unit.seed, unit.fold, 1.0))
    np.testing.assert_array_equal(np.sort(val), data.partition_rows(unit.seed, unit.fold, "val"))
    labelled = np.flatnonzero(module.row_labels.numpy() >= 0)
    np.testing.assert_array_equal(labelled, np.union1d(train, val))  # no test, no pool volume
    test = data.partition_rows(unit.seed, unit.fold, "test")
    assert not np.intersect1d(labelled, test).size
    np.testing.assert_array_equal(module.row_labels[train], data.labels(train))


def test_supervised_in_pool_mode_trains_on_the_pools_truth_and_skips_unknown_volumes():
    cfg, data, out = _smoke(["supervised"])
    assert pretraining_units(cfg, "supervised", out)[0].fold is None  # one per run
    _, module, context = _prepared(cfg, data, out)
    train, val = module.pretraining_rows(context)
    np.testing.assert_array_equal(train, context.pool_rows)  # the phantom's pool is all known
    np.testing.assert_array_equal(module.row_labels[train].numpy(), data.pool_truth[train])
    assert data.cohort.table["label"].iloc[train].isna().all()  # unlabelled volumes only


def test_supervised_pool_mode_without_pool_labels_says_to_use_fold():
    cfg, data, out = _smoke(["supervised"])
    without_truth = dataclasses.replace(data)
    without_truth.__dict__["pool_truth"] = None
    with pytest.raises(MethodConfigError, match="method.supervised.labels=fold"):
        _prepared(cfg, without_truth, out)


def test_supervised_learns_its_labels_and_beats_a_random_encoder_on_a_probe():
    result = pretrain_briefly("supervised", steps=40)
    window = 8
    early, late = np.mean(result.losses[:window]), np.mean(result.losses[-window:])
    assert late < early, f"loss {early:.3f} -> {late:.3f}"
    pretrained = cross_validated_probe_auprc(result.module.encoder, result.data)
    initial = cross_validated_probe_auprc(result.initial_encoder, result.data)
    print(f"supervised: loss {early:.3f} -> {late:.3f}, probe {initial:.3f} -> {pretrained:.3f}")
    assert pretrained > initial, f"probe AUPRC {pretrained:.3f} vs init {initial:.3f}"


@pytest.mark.slow
def test_a_smoke_run_has_marked_control_and_baseline_rows_in_every_table(tmp_path):
    main(
        [
            "run", "--profile", "smoke", "--methods", "scratch,supervised,intensity_features",
            "--out", str(tmp_path), "splits.fractions=[1.0]", "finetune.protocols=[finetune,linear]",
        ]
    )  # fmt: skip
    cells = read_cells(tmp_path)
    planned = {(c["method"], c["protocol"]) for c in cells}
    assert planned == {
        ("scratch", "finetune"), ("scratch", "linear"), ("supervised", "finetune"),
        ("supervised", "linear"), ("intensity_features", "linear"),
    }  # fmt: skip
    assert all(c["status"] == "done" for c in cells)
    assert {c["method"]: c["role"] for c in cells} == {
        "scratch": "method", "supervised": "positive_control", "intensity_features": "baseline",
    }  # fmt: skip
    markdown = (tmp_path / "tables" / "auprc.md").read_text()
    linear = markdown.split("protocol `linear`")[1]
    rows = [line for line in linear.splitlines() if line.startswith("| ")][1:]  # no header
    assert rows[0].startswith("| scratch | **")  # the only competing method: bold
    assert rows[1].startswith("| supervised (positive control: uses labels beyond the cell) |")
    assert rows[2].startswith("| intensity_features (baseline: fixed features, nothing learned) |")
    assert "**" not in rows[1] + rows[2]
    finetune = markdown.split("protocol `finetune`")[1].split("protocol `linear`")[0]
    assert "| intensity_features" not in finetune
    assert "intensity_features (evaluated by linear, knn only)" in finetune
    table = pd.read_csv(tmp_path / "tables" / "auprc.csv")
    assert set(zip(table["method"], table["role"])) == {
        ("scratch", "method"), ("supervised", "positive_control"),
        ("intensity_features", "baseline"),
    }  # fmt: skip
    assert table["missing"].sum() == 0  # no finetune cell of the baseline counted as missing
    latex = (tmp_path / "tables" / "auprc.tex").read_text()
    assert r"supervised {\scriptsize (positive control: uses labels beyond the cell)}" in latex
