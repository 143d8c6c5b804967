"""The benchmark grid end to end on the smoke profile: results, resume, refusal, failures."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
from benchmark.datasets.manifest import read_manifest
from benchmark.datasets.splits import LeakError, make_splits
from conftest import write_manifest
from sklearn.metrics import average_precision_score

from benchmark.cli import main
from benchmark.config import load_config
from benchmark.nn.backbone import monai_resnet18, stage_widths
from benchmark.orchestration import plan
from benchmark.orchestration.grid import ResultConflictError, run_grid
from benchmark.reporting.report import write_report
from benchmark.results import _git_state, code_version, read_cells
from benchmark.training import units

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke-run")
    cfg = load_config("smoke", methods=["scratch", "simclr"])
    run_grid(cfg, out, quiet=True)
    write_report(out)
    return cfg, out


def test_every_cell_is_written_with_its_record(smoke_run):
    cfg, out = smoke_run
    cells = read_cells(out)
    assert set(cfg.finetune.protocols) == {"finetune", "linear", "knn"}
    per_method = len(cfg.splits.fractions) * cfg.splits.folds * len(cfg.splits.seeds)
    assert len(cells) == 2 * len(cfg.finetune.protocols) * per_method
    for cell in cells:
        assert cell["status"] == "done", cell.get("error")
        assert set(cell["metrics"]) >= {
            "auprc",
            "auroc",
            "f1",
            "precision",
            "recall",
            "specificity",
        }
        assert {"config_hash", "config", "versions", "seconds", "prevalence"} <= set(cell)
        unit = None if cell["method"] == "scratch" else f"pretrain/simclr/seed{cell['seed']}"
        assert (cell["pretraining"] or {}).get("unit") == unit
        assert cell["pretraining"] is None or cell["pretraining"]["seed"] == cell["seed"]
        fields = {"subject_id", "side", "label", "pathology", "score"}
        assert all(set(p) == fields for p in cell["predictions"])
        assert all(set(p) == fields for p in cell["validation_predictions"])
        assert ("localisation" in cell) == (cell["protocol"] == "finetune")


def test_stored_auprc_equals_sklearn_on_stored_predictions(smoke_run):
    _, out = smoke_run
    for cell in read_cells(out):
        predictions = pd.DataFrame(cell["predictions"])
        expected = average_precision_score(predictions["label"], predictions["score"])
        assert cell["metrics"]["auprc"] == pytest.approx(expected, abs=1e-6)
        assert cell["prevalence"] == pytest.approx(predictions["label"].mean())


def test_test_subjects_are_the_same_for_every_cell_and_never_in_training(smoke_run):
    _, out = smoke_run
    splits = pd.read_csv(out / "data" / "splits.csv")
    test_subjects = set(splits.loc[splits.partition == "test", "subject_id"])
    for cell in read_cells(out):
        assert {p["subject_id"] for p in cell["predictions"]} == test_subjects


def test_every_seed_pretrains_its_own_encoder_that_loads_strict_into_monai(smoke_run):
    cfg, out = smoke_run
    assert len(cfg.splits.seeds) == 2
    assert sorted(p.name for p in (out / "pretrain" / "simclr").iterdir()) == ["seed0", "seed1"]
    encoders = []
    for seed in cfg.splits.seeds:
        unit = out / "pretrain" / "simclr" / f"seed{seed}"
        encoders.append(torch.load(unit / "encoder.pt", weights_only=True))
        widths = stage_widths(cfg.backbone.width_multiplier)
        monai_resnet18(widths).load_state_dict(encoders[-1], strict=True)
        losses = pd.read_csv(unit / "losses.csv")
        assert len(losses) == cfg.pretrain.max_epochs
        assert {"train_loss", "val_loss", "train_embedding_std", "lr"} <= set(losses.columns)
        record = json.loads((unit / "pretrain.json").read_text())
        assert record["status"] == "done" and not (unit / "checkpoints").exists()
        assert record["seed"] == seed and record["config"]["seed"] == seed
        assert record["export"] == "last" and record["steps"] > 0
    assert not all(torch.equal(encoders[0][k], encoders[1][k]) for k in encoders[0])


def test_report_files_exist(smoke_run):
    cfg, out = smoke_run
    table = pd.read_csv(out / "tables" / "auprc.csv")
    assert set(table["method"]) == {"scratch", "simclr"}
    assert set(table["protocol"]) == {"finetune", "linear", "knn"}
    n = cfg.splits.folds * len(cfg.splits.seeds)
    assert (table["n"] == n).all() and table["ci_low"].notna().all()
    assert (table.loc[table.method == "simclr", "reference"] == "scratch").all()
    assert "\\toprule" in (out / "tables" / "auprc.tex").read_text()
    for name in ("auroc.md", "f1.tex", "pathology.csv", "localisation.md", "pretraining_budget.md"):
        assert (out / "tables" / name).stat().st_size > 100
    localisation = pd.read_csv(out / "tables" / "localisation.csv")
    assert set(localisation["method"]) == {"scratch", "simclr"}
    assert localisation["pointing_game_mean"].between(0, 1).all()
    for name in ("auprc_vs_fraction.png", "pr_curves_f0.5.png", "pretraining_losses.png"):
        assert (out / "figures" / name).stat().st_size > 10_000
    assert (out / "figures" / "summary.pdf").exists() and (out / "report.md").exists()


def test_rerun_skips_finished_cells(smoke_run):
    cfg, out = smoke_run
    stamps = {path: path.stat().st_mtime_ns for path in (out / "cells").rglob("*.json")}
    started = time.perf_counter()
    run_grid(cfg, out, quiet=True)
    assert time.perf_counter() - started < 30
    assert stamps == {path: path.stat().st_mtime_ns for path in (out / "cells").rglob("*.json")}


def test_other_settings_are_refused_unless_forced(smoke_run, tmp_path):
    cfg, out = smoke_run
    changed = load_config("smoke", ["finetune.lr=3e-4"], methods=["scratch"])
    with pytest.raises(ResultConflictError, match="finetune.lr.*--force"):
        run_grid(changed, out, quiet=True)


def test_a_rerun_after_a_code_change_is_refused_naming_both_versions(smoke_run, monkeypatch):
    cfg, out = smoke_run
    for module in (plan, units):
        monkeypatch.setattr(module, "code_version", lambda: "ssl3d 9.9, git feedbeef")
    made = re.escape(code_version())
    with pytest.raises(ResultConflictError, match=f"code changed: they were made by {made}, "):
        run_grid(cfg, out, quiet=True)


def test_the_code_version_names_the_commit_of_a_checkout_and_never_fails_without_one(tmp_path):
    version = code_version()
    assert re.fullmatch(r"ssl3d \S+, git ([0-9a-f]{40}(\+dirty)?|unknown)", version), version
    assert _git_state(tmp_path) == "unknown"  # not a checkout (or no git at all)


def test_a_nonfinite_pretraining_fails_its_cells_and_the_grid_goes_on(tmp_path, capsys):
    with pytest.raises(SystemExit) as status:
        main(
            [
                "run",
                "--profile",
                "smoke",
                "--methods",
                "scratch,simclr",
                "--out",
                str(tmp_path),
                "splits.fractions=[1.0]",
                "method.simclr.pretrain.lr=1e30",
            ]
        )
    assert status.value.code == 1  # the report is written, and the exit says cells failed
    cells = {(c["method"], c["fold"]): c for c in read_cells(tmp_path)}
    assert all(c["status"] == "done" for (m, _), c in cells.items() if m == "scratch")
    failed = [c for (m, _), c in cells.items() if m == "simclr"]
    assert failed and all(c["status"] == "failed" for c in failed)
    assert "NonFiniteLossError" in failed[0]["error"]
    assert "| simclr | failed |" in (tmp_path / "tables" / "auprc.md").read_text()
    printed = capsys.readouterr()
    assert "AUPRC" in printed.out
    failures = sum(cell["status"] == "failed" for cell in read_cells(tmp_path))
    assert f"error: {failures} cell(s) failed" in printed.err


def test_without_unlabelled_rows_pretraining_uses_labelled_training_images(tmp_path):
    cfg = load_config(
        "smoke", ["phantom.unlabelled=0", "splits.fractions=[1.0]"], methods=["simclr"]
    )
    run_grid(cfg, tmp_path, quiet=True)
    log = (tmp_path / "run.log").read_text()
    assert "the manifest has no unlabelled rows, so pretraining uses the images of the" in log
    assert all(c["status"] == "done" for c in read_cells(tmp_path))


def _command(out, *extra):
    return [
        sys.executable,
        "-m",
        "benchmark",
        "run",
        "--profile",
        "smoke",
        "--out",
        str(out),
        *extra,
    ]


def _run_in_subprocess(out, *extra):
    return subprocess.Popen(
        _command(out, *extra), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def _wait_for(condition, process, seconds=300):
    deadline = time.time() + seconds
    while not condition():
        assert process.poll() is None, process.stderr.read()
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def test_a_killed_run_resumes_without_recomputing_finished_work(tmp_path):
    extra = ["--methods", "simclr", "pretrain.max_epochs=4", "splits.fractions=[0.5,1.0]"]
    process = _run_in_subprocess(tmp_path, *extra)
    last = tmp_path / "pretrain" / "simclr" / "seed0" / "checkpoints" / "last.ckpt"
    _wait_for(last.exists, process)
    process.send_signal(signal.SIGKILL)
    process.wait()

    process = _run_in_subprocess(tmp_path, *extra)
    first_cell = tmp_path / "cells" / "simclr" / "finetune" / "f0.5" / "fold0" / "seed0.json"
    _wait_for(first_cell.exists, process)
    stamp = first_cell.stat().st_mtime_ns
    os.kill(process.pid, signal.SIGKILL)
    process.wait()

    finished = subprocess.run(_command(tmp_path, *extra), capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
    log = (tmp_path / "run.log").read_text()
    assert "simclr (seed 0): resuming from" in log
    assert first_cell.stat().st_mtime_ns == stamp
    assert all(c["status"] == "done" for c in read_cells(tmp_path))
    assert len(pd.read_csv(tmp_path / "pretrain" / "simclr" / "seed0" / "losses.csv")) == 4


def test_missing_manifest_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as status:
        main(
            [
                "run",
                "--profile",
                "smoke",
                "--data",
                str(tmp_path / "nope.csv"),
                "--out",
                str(tmp_path),
            ]
        )
    assert status.value.code == 2
    assert "nope.csv: no such manifest file" in capsys.readouterr().err


def test_a_run_refuses_a_pretraining_pool_holding_a_test_subject(tmp_path, cohort_factory):
    """A subject with a labelled sinus in the test set and an unlabelled scan in the pool."""
    cohort = cohort_factory(subjects=12, unlabelled=4)
    rows = cohort.rows
    cfg = load_config(
        "smoke",
        [f"data.manifest={cohort.manifest}", "data.size=8", "data.crop=9"],
        methods=["simclr"],
    )
    table = read_manifest(cohort.manifest).table
    splits = make_splits(
        table[table["label"].notna()],
        test=float(cfg.splits.test),
        folds=int(cfg.splits.folds),
        seeds=tuple(cfg.splits.seeds),
        fractions=tuple(cfg.splits.fractions),
    )
    test_subject = splits.loc[splits["partition"] == "test", "subject_id"].iloc[0]
    unlabelled = [dict(row, subject_id=test_subject, side="") for row in rows if not row["label"]]
    write_manifest(cohort.manifest, [r for r in rows if r["label"]] + unlabelled[:1])
    with pytest.raises(LeakError, match=f"test subject.*{test_subject}"):
        run_grid(cfg, tmp_path / "out", quiet=True)
