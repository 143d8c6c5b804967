"""The report: tables, statistics and figures from cell files, including bad input."""

import itertools
import json
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from sklearn.metrics import average_precision_score

from benchmark.cli import main
from benchmark.evaluation.metrics import classification_metrics
from benchmark.reporting.collect import MixedConfigurationError, collect
from benchmark.reporting.pooling import evaluation_design, pooled_auprc, pooled_predictions
from benchmark.reporting.report import EmptyReportError, write_report
from benchmark.reporting.statistics import subject_draws
from benchmark.reporting.summaries import (
    Bootstrap,
    FixedTestSet,
    comparisons,
    entries,
    localisation_results,
    pathology_results,
)
from benchmark.results import Cell, write_json_atomic


def _write_cell(out, method, fraction, fold, auprc, status="done"):
    record = {
        "method": method,
        "protocol": "finetune",
        "fraction": fraction,
        "fold": fold,
        "seed": 0,
        "status": status,
        "prevalence": 0.5,
        "backbone": "3D ResNet18 (narrow), widths 8/8/16/32",
        "profile": "smoke",
        "config_hash": "x",
    }
    if status == "done":
        record["metrics"] = {"auprc": auprc, "auroc": 0.5, "f1": 0.5}
    else:
        record["error"] = "pretraining failed: NonFiniteLossError"
    write_json_atomic(Cell(method, "finetune", fraction, fold, 0).path(out), record)


def test_report_tables_and_figure(tmp_path):
    for fold, (a, b) in enumerate([(0.6, 0.7), (0.8, 0.9)]):
        _write_cell(tmp_path, "scratch", 0.5, fold, a)
        _write_cell(tmp_path, "simclr", 0.5, fold, b)
        _write_cell(tmp_path, "scratch", 1.0, fold, b)
    _write_cell(tmp_path, "simclr", 1.0, 0, None, status="failed")

    report = write_report(tmp_path)
    table = pd.read_csv(tmp_path / "tables" / "auprc.csv")
    assert list(table.columns[:5]) == ["method", "fraction", "mean", "std", "n"]
    simclr_half = table[(table.method == "simclr") & (table.fraction == 0.5)].iloc[0]
    assert simclr_half["mean"] == pytest.approx(0.8) and simclr_half["n"] == 2
    assert simclr_half["std"] == pytest.approx(pd.Series([0.7, 0.9]).std(), abs=1e-6)
    failed = table[(table.method == "simclr") & (table.fraction == 1.0)].iloc[0]
    assert failed["n"] == 0 and failed["failed"] == 1 and pd.isna(failed["mean"])

    markdown = (tmp_path / "tables" / "auprc.md").read_text()
    assert "**0.800 ± 0.141**" in markdown  # best of its column in bold
    assert "| simclr | **0.800 ± 0.141** | failed |" in markdown
    assert "profile smoke" in markdown and "widths 8/8/16/32" in markdown
    latex = (tmp_path / "tables" / "auprc.tex").read_text()
    assert "\\toprule" in latex and "\\textbf{0.800 $\\pm$ 0.141}" in latex
    assert (tmp_path / "figures" / "auprc_vs_fraction.png").stat().st_size > 10_000
    assert report.markdown == markdown


def test_report_of_an_empty_folder_says_what_to_do(tmp_path):
    with pytest.raises(EmptyReportError, match="run `ssl3d run --out"):
        write_report(tmp_path)


# Synthetic run folders with predictions: 24 test subjects, both sinuses, known pathologies.
SUBJECTS = [f"S{i:02d}" for i in range(24)]
FINDINGS = ["polyp", "retention_cyst", "mucosal_thickening;polyp"]


def _volumes(pathologies=True):
    rng = np.random.default_rng(0)
    volumes = []
    for subject, side in itertools.product(SUBJECTS, "LR"):
        label = int(rng.random() < 0.5)
        finding = FINDINGS[rng.integers(3)] if label and pathologies else ""
        volumes.append({"subject_id": subject, "side": side, "label": label, "pathology": finding})
    return volumes


def _scores(kind, volumes, seed):
    rng = np.random.default_rng(seed)
    labels = np.array([v["label"] for v in volumes])
    if kind == "perfect":
        return 0.6 + 0.3 * labels + 0.05 * rng.random(len(labels))
    if kind == "good":
        return labels * 0.3 + rng.random(len(labels))
    return rng.random(len(labels))  # "random"


def _write_scored_cell(out, method, kind, fraction, fold, seed, protocol="finetune", **extra):
    volumes = extra.pop("volumes", None) or _volumes()
    scores = _scores(kind, volumes, seed=hash((fraction, fold, seed)) % 2**32)
    labels = torch.tensor([v["label"] for v in volumes])
    predictions = [{**v, "score": float(s)} for v, s in zip(volumes, scores, strict=True)]
    record = {
        "method": method,
        "protocol": protocol,
        "fraction": fraction,
        "fold": fold,
        "seed": seed,
        "status": "done",
        "metrics": classification_metrics(torch.tensor(scores), labels, 0.75),
        "prevalence": float(labels.float().mean()),
        "threshold": 0.75,
        "predictions": predictions,
        "backbone": "3D ResNet18 (narrow), widths 8/8/16/32",
        "profile": "smoke",
        **extra,
    }
    write_json_atomic(Cell(method, protocol, fraction, fold, seed).path(out), record)
    return record


@pytest.fixture(scope="module")
def perfect_vs_random(tmp_path_factory):
    """scratch scores at random, `copy` exactly like scratch, `perfect` ranks perfectly:
    2 fractions x 3 folds x 4 seeds (with 2 seeds the training variance has 1 degree of
    freedom, and even a perfect scorer is not significant)."""
    out = tmp_path_factory.mktemp("perfect-vs-random")
    for fraction, fold, seed in itertools.product([0.5, 1.0], range(3), range(4)):
        _write_scored_cell(out, "scratch", "random", fraction, fold, seed)
        _write_scored_cell(out, "copy", "random", fraction, fold, seed)
        _write_scored_cell(out, "perfect", "perfect", fraction, fold, seed)
    return out


def test_perfect_scorer_is_significant_and_an_identical_method_is_not(perfect_vs_random):
    results = collect(perfect_vs_random)
    bootstrap = Bootstrap.run(results, FixedTestSet.of(results.records), 300, seed=0)
    tests = comparisons(results.cells, "auprc", "scratch", bootstrap).set_index(
        ["method", "fraction"]
    )
    for fraction in (0.5, 1.0):
        perfect, copy = tests.loc[("perfect", fraction)], tests.loc[("copy", fraction)]
        assert perfect["pairs"] == 12 and perfect["paired_seeds"] == 4 and perfect["diff"] > 0.3
        assert perfect["p_holm"] < 0.05 and perfect["p_test_only_holm"] < 0.05
        assert perfect["significant"] and perfect["diff_low"] > 0
        assert copy["diff"] == 0 and not copy["significant"]
        assert copy["p"] == 1.0 and copy["p_test_only"] == 1.0
        assert copy["p_holm"] == 1.0 and copy["p_test_only_holm"] == 1.0


def test_report_marks_the_significant_method_and_prints_latex(perfect_vs_random, capsys):
    main(["report", str(perfect_vs_random), "--format", "latex", "--bootstrap", "200"])
    printed = capsys.readouterr().out
    assert "\\begin{table}" in printed and "\\toprule" in printed and "$^{*\\dagger}$" in printed
    markdown = (perfect_vs_random / "tables" / "auprc.md").read_text()
    rows = {line.split(" | ")[0].strip("| "): line for line in markdown.splitlines() if "|" in line}
    assert rows["perfect"].count("\\*†") == 2  # * escaped in Markdown
    assert "†" not in rows["copy"] and "*" not in rows["copy"]
    assert markdown.index("| scratch |") < markdown.index("| copy |")  # reference first
    assert "differs from scratch" in markdown and "family of 2 comparison(s)" in markdown
    assert "Minimum detectable difference" in markdown
    table = pd.read_csv(perfect_vs_random / "tables" / "auprc.csv")
    assert list(table.columns[:6]) == ["method", "fraction", "mean", "std", "n", "failed"]
    assert table.columns[-1] == "protocol"
    for name in ("auroc", "f1", "pathology", "localisation"):
        assert (perfect_vs_random / "tables" / f"{name}.csv").exists() == (name != "localisation")
    for name in ("summary.png", "summary.pdf", "pr_curves_f0.5.png", "auroc_vs_fraction.png"):
        assert (perfect_vs_random / "figures" / name).stat().st_size > 10_000


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="needs pdflatex")
def test_latex_tables_with_the_new_marks_and_caption_compile_with_booktabs(perfect_vs_random):
    write_report(perfect_vs_random, replicates=200)
    tables = (perfect_vs_random / "tables" / "auprc.tex").read_text()
    assert "Minimum detectable difference" in tables and "$^{*\\dagger}$" in tables
    document = perfect_vs_random / "tables" / "compiled.tex"
    document.write_text(
        "\\documentclass{article}\n\\usepackage[utf8]{inputenc}\n\\usepackage{booktabs}\n"
        f"\\begin{{document}}\n{tables}\n\\end{{document}}\n"
    )
    compiled = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", document.name],
        cwd=document.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert compiled.returncode == 0, compiled.stdout[-2000:]
    assert (document.parent / "compiled.pdf").stat().st_size > 1000


def _auprc(record):
    predictions = pd.DataFrame(record["predictions"])
    return average_precision_score(predictions["label"], predictions["score"])


def test_bootstrap_ci_and_paired_p_equal_a_direct_resampling_loop(tmp_path):
    for fold in range(3):
        _write_scored_cell(tmp_path, "scratch", "random", 1.0, fold, 0)
        _write_scored_cell(tmp_path, "simclr", "good", 1.0, fold, 0)
    results = collect(tmp_path)
    bootstrap = Bootstrap.run(results, FixedTestSet.of(results.records), 40, seed=7)
    summary = entries(results.cells, "auprc", bootstrap).set_index("method")
    test = comparisons(results.cells, "auprc", "scratch", bootstrap).iloc[0]

    cells = {
        m: [results.records[(m, "finetune", 1.0, f, 0)] for f in range(3)] for m in summary.index
    }
    draws = subject_draws(len(SUBJECTS), 40, seed=7)  # indices into the sorted test subjects

    def resampled(method, b):
        values = []
        for record in cells[method]:
            volumes = pd.DataFrame(record["predictions"])
            rows = np.concatenate(
                [np.flatnonzero(volumes.subject_id == SUBJECTS[s]) for s in draws[b]]
            )
            drawn = volumes.iloc[rows]
            values.append(average_precision_score(drawn["label"], drawn["score"]))
        return np.mean(values)

    replicates = {m: np.array([resampled(m, b) for b in range(40)]) for m in cells}
    for method in cells:
        assert summary.loc[method, "mean"] == pytest.approx(
            np.mean([_auprc(r) for r in cells[method]])
        )
        expected = tuple(np.percentile(replicates[method], [2.5, 97.5]))
        assert (summary.loc[method, "ci_low"], summary.loc[method, "ci_high"]) == pytest.approx(
            expected
        )
    observed = summary.loc["simclr", "mean"] - summary.loc["scratch", "mean"]
    assert test["diff"] == pytest.approx(observed)
    extreme = np.abs(replicates["simclr"] - replicates["scratch"] - observed) >= abs(observed)
    assert test["p_test_only"] == pytest.approx((1 + extreme.sum()) / 41)


def _run_yaml(out, methods, fractions=(0.5, 1.0), folds=2, seeds=(0,)):
    OmegaConf.save(
        {
            "methods": list(methods),
            "finetune": {"protocols": ["finetune"]},
            "splits": {"fractions": list(fractions), "folds": folds, "seeds": list(seeds)},
        },
        out / "run.yaml",
    )


def test_missing_and_failed_cells_are_shown_as_such_and_absent_sections_say_why(tmp_path):
    _run_yaml(tmp_path, ["scratch", "simclr"])
    volumes = _volumes(pathologies=False)
    for fold in range(2):
        _write_scored_cell(tmp_path, "scratch", "random", 0.5, fold, 0, volumes=volumes)
        _write_scored_cell(tmp_path, "scratch", "random", 1.0, fold, 0, volumes=volumes)
    _write_scored_cell(tmp_path, "simclr", "good", 0.5, 0, 0, volumes=volumes)  # fold 1 missing
    _write_cell(tmp_path, "simclr", 1.0, 0, None, status="failed")  # fold 1 missing too
    (tmp_path / "cells" / "simclr" / "finetune" / "f1" / "fold1").mkdir(parents=True)
    (tmp_path / "cells" / "simclr" / "finetune" / "f1" / "fold1" / "seed0.json").write_text("{")

    report = write_report(tmp_path, replicates=50)
    table = pd.read_csv(tmp_path / "tables" / "auprc.csv").set_index(["method", "fraction"])
    assert table.loc[("simclr", 0.5), ["n", "failed", "missing"]].tolist() == [1, 0, 1]
    assert table.loc[("simclr", 1.0), ["n", "failed", "missing"]].tolist() == [0, 1, 1]
    assert pd.isna(table.loc[("simclr", 1.0), "mean"])
    row = next(line for line in report.markdown.splitlines() if line.startswith("| simclr"))
    assert "(1 missing)" in row and row.endswith("| failed/missing |")
    notes = " ".join(report.notes)
    assert "seed0.json: it is not readable JSON; counted as missing" in notes
    assert "records no pathologies" in notes and "localisation skipped" in notes
    assert not (tmp_path / "tables" / "pathology.csv").exists()
    assert "## Notes" in (tmp_path / "report.md").read_text()


def test_cells_of_several_configurations_are_refused_with_the_reason(tmp_path):
    _write_scored_cell(tmp_path, "scratch", "random", 1.0, 0, 0)
    _write_scored_cell(tmp_path, "simclr", "good", 1.0, 0, 0, profile="quick")
    with pytest.raises(MixedConfigurationError, match="the profile differs: smoke in 1 cell"):
        write_report(tmp_path)

    settings = {"protocol": {"lr": 1e-4, "batch_size": 16}, "data": {"test": "abc"}}
    _write_scored_cell(tmp_path, "simclr", "good", 1.0, 0, 0, config=settings)
    settings = {"protocol": {"lr": 3e-4, "batch_size": 16}, "data": {"test": "abc"}}
    _write_scored_cell(tmp_path, "simclr", "good", 1.0, 1, 0, config=settings)
    with pytest.raises(MixedConfigurationError, match=r"protocol 'finetune' differs: lr=0\.0001"):
        collect(tmp_path)


def test_per_finding_results_equal_a_direct_computation(tmp_path):
    records = [_write_scored_cell(tmp_path, "simclr", "good", 1.0, f, 0) for f in range(2)]
    results = collect(tmp_path)
    bootstrap = Bootstrap.run(results, FixedTestSet.of(results.records), 50, seed=0)
    table = pathology_results(results, bootstrap).set_index("finding")
    assert list(table.index) == ["normal", "mucosal_thickening", "polyp", "retention_cyst"]
    for finding in ("polyp", "retention_cyst"):
        auprc, recall = [], []
        for record in records:
            volumes = pd.DataFrame(record["predictions"])
            has = volumes["pathology"].str.split(";").apply(lambda f, x=finding: x in f)
            subset = volumes[has | (volumes["label"] == 0)]
            auprc.append(average_precision_score(subset["label"], subset["score"]))
            recall.append((volumes.loc[has, "score"] >= record["threshold"]).mean())
        assert table.loc[finding, "auprc_mean"] == pytest.approx(np.mean(auprc))
        assert table.loc[finding, "recall_mean"] == pytest.approx(np.mean(recall))
    specificity = [r["metrics"]["specificity"] for r in records]
    assert table.loc["normal", "recall_mean"] == pytest.approx(np.mean(specificity))
    polyp = sum("polyp" in v["pathology"] for v in records[0]["predictions"])
    assert table.loc["polyp", "volumes"] == polyp


def test_localisation_results_average_volumes_then_cells(tmp_path):
    hits = [[1.0, 0.0, 0.5], [1.0, 1.0, 1.0]]
    for fold in range(2):
        volumes = [
            {"subject_id": f"S{i}", "side": "L", "pathology": "polyp" if i else "retention_cyst",
             "voxel_auprc": 0.1 * (i + 1), "pointing_hit": hits[fold][i], "mask_fraction": 0.02}
            for i in range(3)
        ]  # fmt: skip
        localisation = {"stage": "layer3", "volumes": volumes}
        _write_scored_cell(tmp_path, "simclr", "good", 1.0, fold, 0, localisation=localisation)
    table = localisation_results(collect(tmp_path)).set_index("finding")
    assert table.loc["all", "pointing_game_mean"] == pytest.approx((0.5 + 1.0) / 2)
    assert table.loc["polyp", "pointing_game_mean"] == pytest.approx((0.25 + 1.0) / 2)
    assert table.loc["all", "voxel_auprc_mean"] == pytest.approx(0.2)
    assert table.loc["all", "chance"] == pytest.approx(0.02) and table.loc["all", "cells"] == 2


def test_fold_scoped_pretrainings_are_one_configuration_unless_a_unit_differs(tmp_path):
    def pretraining(fold, lr=1e-3, pool="p"):
        return {
            "method": "residual", "seed": 0, "fold": fold, "settings": {"filter": 5},
            "pretrain": {"lr": lr}, "data": {"fold_training": f"rows{fold}", "pool": pool},
        }  # fmt: skip

    for fold in range(2):
        config = {"pretraining": pretraining(fold)}
        _write_scored_cell(tmp_path, "residual", "good", 1.0, fold, 0, config=config)
    assert len(collect(tmp_path).records) == 2
    config = {"pretraining": pretraining(1, pool="q")}
    _write_scored_cell(tmp_path, "residual", "good", 0.5, 1, 0, config=config)
    with pytest.raises(MixedConfigurationError, match=r"'residual' \(seed 0, fold 1\) differs"):
        collect(tmp_path)
    config = {"pretraining": pretraining(1, lr=1.0)}
    _write_scored_cell(tmp_path, "residual", "good", 0.5, 1, 0, config=config)
    with pytest.raises(MixedConfigurationError, match="pretraining settings of 'residual'"):
        collect(tmp_path)


def test_captions_say_what_one_pretraining_seed_and_a_whole_fold_autoencoder_mean(tmp_path):
    def pretraining(method, seed, normals):
        settings = {"cae": {"normals": normals}} if method == "residual" else {}
        return {"pretraining": {"method": method, "seed": seed, "fold": 0, "settings": settings}}

    def captions(folder):
        write_report(folder, replicates=20)
        return [(folder / "tables" / f"{name}.md").read_text() for name in ("auprc", "f1")]

    one_seed, wide = "pretraining variation was not sampled", "residual: autoencoder trained on"
    for fold, seed in itertools.product(range(2), range(2)):
        for method in ("residual", "simclr"):
            config = pretraining(method, seed, "smallest_fraction")
            _write_scored_cell(tmp_path / "a", method, "good", 1.0, fold, seed, config=config)
            config = pretraining(method, 0, "training")
            _write_scored_cell(tmp_path / "b", method, "good", 1.0, fold, 0, config=config)
    assert not any(one_seed in t or wide in t for t in captions(tmp_path / "a"))
    assert all(one_seed in t and wide in t for t in captions(tmp_path / "b"))
    assert (
        "the normals of the whole training fold (more labels than the cell)"
        in (tmp_path / "b" / "report.md").read_text()
    )


def test_report_prints_the_chosen_metric_as_csv(perfect_vs_random, capsys):
    main(["report", str(perfect_vs_random), "--format", "csv", "--metric", "auroc"])
    printed = capsys.readouterr().out
    table = (perfect_vs_random / "tables" / "auroc.csv").read_text()
    assert table in printed and table.startswith("method,fraction,mean,std,n,failed")


def _rotating_run(out, folds=3, seeds=(0, 1)):
    """Cells of rotating test folds: fold k scores subjects k, k + folds, ... of every seed."""
    volumes = _volumes()
    records = []
    for method, kind in (("scratch", "random"), ("simclr", "good")):
        for fraction, fold, seed in itertools.product([0.5, 1.0], range(folds), seeds):
            part = {s for i, s in enumerate(SUBJECTS) if (i + seed) % folds == fold}
            mine = [v for v in volumes if v["subject_id"] in part]
            records.append(
                _write_scored_cell(out, method, kind, fraction, fold, seed, volumes=mine)
            )
    return records


def test_pooled_predictions_equal_sklearn_on_the_concatenated_folds(tmp_path):
    records = _rotating_run(tmp_path)
    predictions = pooled_predictions(records)
    assert evaluation_design(predictions) == "rotating"
    pooled = pooled_auprc(predictions, replicates=50).set_index(["method", "fraction"])
    for (method, fraction), row in pooled.iterrows():
        per_seed = []
        for seed in (0, 1):
            chosen = [
                r
                for r in records
                if (r["method"], r["fraction"], r["seed"]) == (method, fraction, seed)
            ]
            concatenated = pd.DataFrame([p for r in chosen for p in r["predictions"]])
            assert len(concatenated) == 2 * len(SUBJECTS)  # every volume once per seed
            assert set(concatenated["subject_id"]) == set(SUBJECTS)
            per_seed.append(average_precision_score(concatenated["label"], concatenated["score"]))
        assert row["mean"] == pytest.approx(np.mean(per_seed), abs=1e-12)
        assert row["std"] == pytest.approx(np.std(per_seed, ddof=1), abs=1e-12)
        assert row["n"] == 2 and row["subjects"] == len(SUBJECTS) and row["ci_low"] <= row["mean"]
    fixed = pooled_predictions(collect_records_of_fixed_cells(tmp_path / "fixed"))
    assert evaluation_design(fixed) == "fixed"
    overlapping = [dict(r) for r in records]
    overlapping[1] = {**overlapping[1], "predictions": overlapping[0]["predictions"][:4]}
    with pytest.raises(MixedConfigurationError, match="overlapping but different test subjects"):
        evaluation_design(pooled_predictions(overlapping))


def collect_records_of_fixed_cells(out):
    return [_write_scored_cell(out, "scratch", "random", 1.0, fold, 0) for fold in range(3)]


def test_rotating_report_pools_out_of_fold_predictions_and_captions_say_so(tmp_path):
    _rotating_run(tmp_path)
    write_report(tmp_path, replicates=50)
    pooled = (tmp_path / "tables" / "pooled_auprc.md").read_text()
    assert "pooled out-of-fold" in pooled
    assert f"each of the {len(SUBJECTS)} labelled subjects ({2 * len(SUBJECTS)} volumes)" in pooled
    table = pd.read_csv(tmp_path / "tables" / "pooled_auprc.csv")
    assert set(table["method"]) == {"scratch", "simclr"} and (table["n"] == 2).all()
    per_cell = (tmp_path / "tables" / "auprc.md").read_text()
    assert "rotating test folds" in per_cell and "tables/pooled_auprc.md" in per_cell
    assert "pooled out-of-fold" in (tmp_path / "report.md").read_text()


def test_every_caption_states_the_fixed_test_size(perfect_vs_random):
    write_report(perfect_vs_random, replicates=50)
    size = f"fixed test set of {len(SUBJECTS)} subjects ({2 * len(SUBJECTS)} volumes)"
    for name in ("auprc", "auroc", "f1", "pathology"):
        text = (perfect_vs_random / "tables" / f"{name}.md").read_text()
        assert text.count(size) == text.count("Backbone") > 0, name
    assert not (perfect_vs_random / "tables" / "pooled_auprc.md").exists()


def test_every_planned_cell_is_accounted_for_and_bad_cell_files_are_set_aside(tmp_path):
    _run_yaml(tmp_path, ["scratch", "simclr"])
    for fraction in (0.5, 1.0):
        for fold in range(2):
            _write_cell(tmp_path, "scratch", fraction, fold, 0.6)
    _write_cell(tmp_path, "simclr", 0.5, 0, 0.7)
    copied = Cell("simclr", "finetune", 0.5, 1, 0).path(tmp_path)  # fold 0's file in fold 1
    copied.parent.mkdir(parents=True)
    copied.write_bytes(Cell("simclr", "finetune", 0.5, 0, 0).path(tmp_path).read_bytes())
    _write_cell(tmp_path, "simclr", 1.0, 0, None, status="failed")
    hollow = Cell("simclr", "finetune", 1.0, 1, 0).path(tmp_path)
    write_json_atomic(hollow, {**json.loads(copied.read_text()), "fraction": 1.0, "fold": 1})
    record = json.loads(hollow.read_text())
    del record["metrics"]
    write_json_atomic(hollow, record)

    report = write_report(tmp_path, replicates=50)
    notes = " ".join(report.notes)
    assert "f0.5/fold1/seed0.json: it records the cell simclr/finetune/f0.5/fold0/seed0" in notes
    assert "f1/fold1/seed0.json: it says done but holds no AUPRC" in notes
    table = pd.read_csv(tmp_path / "tables" / "auprc.csv").set_index(["method", "fraction"])
    assert table.loc[("simclr", 0.5), ["n", "missing"]].tolist() == [1, 1]  # not counted twice
    assert report.failed == 1
    text = (tmp_path / "report.md").read_text()
    assert "## Cells: every planned cell, done, failed or missing" in text
    assert "| finetune | 8 | 5 | 1 | 2 | pretraining failed: NonFiniteLossError |" in text


def test_a_protocol_whose_every_cell_failed_stays_in_the_report(tmp_path):
    _run_yaml(tmp_path, ["scratch"], fractions=(1.0,))
    OmegaConf.save(
        {
            "methods": ["scratch"],
            "finetune": {"protocols": ["finetune", "knn"]},
            "splits": {"fractions": [1.0], "folds": 2, "seeds": [0]},
        },
        tmp_path / "run.yaml",
    )
    for fold in range(2):
        _write_cell(tmp_path, "scratch", 1.0, fold, 0.6)
        failed = {"method": "scratch", "protocol": "knn", "fraction": 1.0, "fold": fold}
        failed.update(seed=0, status="failed", error="knn failed: ValueError: k > samples\n...")
        write_json_atomic(Cell("scratch", "knn", 1.0, fold, 0).path(tmp_path), failed)
    report = write_report(tmp_path, replicates=50)
    assert report.warnings == [
        "protocol knn: all 2 cells failed: knn failed: ValueError: k > samples"
    ]
    assert report.failed == 2
    text = (tmp_path / "report.md").read_text()
    assert "protocol knn: all 2 cells failed" in text.split("## Cells")[0]  # in the warnings


def test_a_half_written_run_yaml_is_a_note_not_a_traceback(tmp_path):
    _run_yaml(tmp_path, ["scratch"])
    for fraction in (0.5, 1.0):
        for fold in range(2):
            _write_cell(tmp_path, "scratch", fraction, fold, 0.6)
    (tmp_path / "run.yaml").write_text("methods: [scratch\nsplits: {folds")  # cut short
    report = write_report(tmp_path, replicates=50)
    assert any(note.startswith("run.yaml could not be read") for note in report.notes)
