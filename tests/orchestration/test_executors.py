"""The Ray executor on a local Ray instance: the local executor's results, and a dead worker."""

import shutil
import sys

import pytest

from benchmark.cli import main
from benchmark.config import load_config
from benchmark.errors import UserError
from benchmark.orchestration.grid import run_grid
from benchmark.results import Cell, read_cells, read_json

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow

METHODS = ["scratch", "simclr"]
SETTINGS = ["finetune.protocols=[linear,knn]", "pretrain.max_epochs=1", "splits.seeds=[0]"]
# The cell whose worker dies (scratch: no pretraining to wait for).
KILLED = Cell("scratch", "knn", 1.0, 1, 0)


def _config(executor, methods=METHODS):
    return load_config("smoke", [*SETTINGS, f"executor.name={executor}"], methods=methods)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    run_grid(_config("local"), out, quiet=True)
    return out


def _kill_once(cell, folder):
    """A worker setup hook: the first worker to evaluate ``cell`` in run folder ``folder``
    exits at once, as a crashed one would."""

    def hook():
        import importlib
        import os
        from pathlib import Path

        from benchmark.evaluation.protocols import get_protocol

        module_name, function = get_protocol(cell.protocol).runner.split(":")
        module = importlib.import_module(module_name)
        runner = getattr(module, function)
        marker = folder / "killed"

        def run(this, cfg, data, encoder, workdir):
            if this == cell and Path(workdir).is_relative_to(folder) and not marker.exists():
                marker.touch()
                os._exit(1)
            return runner(this, cfg, data, encoder, workdir)

        setattr(module, function, run)

    return hook


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """A Ray instance on two CPUs whose workers die on ``KILLED`` in the folder it yields."""
    folder = tmp_path_factory.mktemp("killed")
    hook = _kill_once(KILLED, folder)
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"worker_process_setup_hook": hook})
    yield folder
    ray.shutdown()


def _copy_data(source, out):
    """The phantom of another run folder, so that this run does not generate it again."""
    shutil.copytree(source / "data", out / "data")


def _results(out):
    """What a cell's numbers are, by cell (not its timings and versions)."""
    fields = ("status", "config_hash", "metrics", "threshold", "predictions")
    return {
        Cell(c["method"], c["protocol"], c["fraction"], c["fold"], c["seed"]): {
            key: c.get(key) for key in (*fields, "validation_predictions")
        }
        for c in read_cells(out)
    }


def _stamps(out):
    return {path: path.stat().st_mtime_ns for path in (out / "cells").rglob("*.json")}


def test_ray_reproduces_the_local_executor(local_run, local_ray, tmp_path):
    _copy_data(local_run, tmp_path)
    run_grid(_config("ray"), tmp_path, quiet=True)
    local, remote = _results(local_run), _results(tmp_path)
    assert len(local) == 16 and all(c["status"] == "done" for c in local.values())
    assert remote == local
    log = (tmp_path / "run.log").read_text()
    assert "pretrained simclr (seed 0) in" in log and "[16/16]" in log

    stamps = _stamps(tmp_path)
    run_grid(_config("ray"), tmp_path, quiet=True)
    assert _stamps(tmp_path) == stamps


def test_a_dead_workers_cell_fails_alone_and_a_rerun_redoes_it(local_run, local_ray):
    out = local_ray
    _copy_data(local_run, out)
    cfg = _config("ray", ["scratch"])
    run_grid(cfg, out, quiet=True)
    killed = read_json(KILLED.path(out))
    assert killed["status"] == "failed" and "WorkerCrashedError" in killed["error"]
    assert sum(c["status"] == "done" for c in read_cells(out)) == 7
    stamps = _stamps(out)

    run_grid(cfg, out, quiet=True)
    for path, stamp in stamps.items():
        assert (path.stat().st_mtime_ns == stamp) == (path != KILLED.path(out))
    expected = _results(local_run)
    assert _results(out) == {cell: expected[cell] for cell in expected if cell.method == "scratch"}
    log = (out / "run.log").read_text()
    assert f"{KILLED.title}: FAILED: WorkerCrashedError" in log
    assert log.count(f"{KILLED.title}: AUPRC") == 1


def test_an_unknown_executor_or_missing_ray_is_a_clear_error(tmp_path, monkeypatch, capsys):
    with pytest.raises(UserError, match="unknown executor .* known executors: local, ray"):
        run_grid(_config("dask"), tmp_path, quiet=True)
    with pytest.raises(SystemExit):
        main(["run", "--executor", "dask", "--out", str(tmp_path)])
    assert "invalid choice: 'dask'" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(UserError, match=r"pip install ssl3d\[ray\]"):
        run_grid(_config("ray"), tmp_path, quiet=True)
