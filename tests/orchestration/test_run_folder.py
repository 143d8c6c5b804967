"""A run folder is written by one command at a time, and a refused run leaves it untouched."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmark.cli import main
from benchmark.config import load_config
from benchmark.orchestration.grid import ResultConflictError, run_grid
from benchmark.orchestration.lock import LOCK_NAME, RunFolderInUseError, run_folder_lock

pytestmark = pytest.mark.slow

TINY = ["splits.fractions=[1.0]", "finetune.protocols=[linear]"]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished-run")
    run_grid(load_config("smoke", TINY, methods=["scratch"]), out, quiet=True)
    return out


@pytest.mark.parametrize(
    "change",
    [
        ["probes.linear.C=[0.5]"],  # only the cells differ
        ["phantom.seed=1"],  # another phantom: the cohort would be regenerated
        ["splits.test_seed=3"],  # another split file
    ],
)
def test_a_refused_rerun_leaves_every_file_as_it_was(finished_run, change):
    before = _snapshot(finished_run)
    changed = load_config("smoke", [*TINY, *change], methods=["scratch"])
    with pytest.raises(ResultConflictError, match="--force"):
        run_grid(changed, finished_run, quiet=True)
    assert _snapshot(finished_run) == before


def test_a_folder_in_use_is_refused_within_seconds_and_the_first_run_finishes(tmp_path):
    command = [sys.executable, "-m", "benchmark", "run", "--profile", "smoke", "--out"]
    first = subprocess.Popen(
        [*command, str(tmp_path), "--methods", "scratch,simclr", *TINY],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lock = tmp_path / LOCK_NAME
    deadline = time.time() + 120
    while not (lock.exists() and lock.read_text()):
        assert first.poll() is None, first.stderr.read()
        assert time.time() < deadline, "the first run never took the lock"
        time.sleep(0.05)
    second = subprocess.run(
        [*command, str(tmp_path), "--methods", "scratch", *TINY], capture_output=True, text=True
    )
    assert first.poll() is None  # refused at once, not after waiting for the first run
    assert second.returncode != 0
    assert "is in use by `ssl3d run`" in second.stderr
    assert f"pid {first.pid}" in second.stderr
    assert "Traceback" not in second.stderr
    assert first.wait(timeout=600) == 0, first.stderr.read()
    cells = [json.loads(p.read_text()) for p in (tmp_path / "cells").rglob("*.json")]
    assert cells and all(cell["status"] == "done" for cell in cells)
    assert lock.read_text() == ""  # released: nothing names a finished run


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path, capsys):
    dead = {"command": "ssl3d run", "host": "elsewhere", "pid": 999999, "started": "earlier"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(dead))
    messages = []
    with run_folder_lock(tmp_path, "ssl3d run", messages.append):
        holder = json.loads((tmp_path / LOCK_NAME).read_text())
        assert holder["command"] == "ssl3d run" and holder["pid"] != 999999
    assert "left by `ssl3d run` (pid 999999 on elsewhere" in messages[0]


def test_one_process_may_hold_its_folder_twice_but_another_may_not(tmp_path):
    with run_folder_lock(tmp_path, "ssl3d run"), run_folder_lock(tmp_path, "ssl3d run"):
        other = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from benchmark.orchestration.lock import run_folder_lock\n"
                "with run_folder_lock(sys.argv[1], 'ssl3d tune'): pass",
                str(tmp_path),
            ],
            capture_output=True,
            text=True,
        )
        assert "RunFolderInUseError" in other.stderr
    with run_folder_lock(tmp_path, "ssl3d tune"):
        pass  # released after the outer block


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda path: path.write_text("x"), "a file is in the way"),
        pytest.param(
            lambda path: path.mkdir(mode=0o500),
            "no permission to write there",
            marks=pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere"),
        ),
    ],
)
def test_an_unusable_out_is_one_clear_sentence(tmp_path, make, message):
    out = tmp_path / "out"
    make(out)
    with pytest.raises(Exception) as error:
        with run_folder_lock(out, "ssl3d run"):
            pass
    assert message in str(error.value)
    assert not isinstance(error.value, RunFolderInUseError)


def test_data_phantom_refuses_a_non_empty_folder_unless_forced(tmp_path, capsys):
    (tmp_path / "manifest.csv").write_text("mine\n")
    with pytest.raises(SystemExit) as status:
        main(["data", "phantom", "--out", str(tmp_path), "--labelled", "4", "--unlabelled", "0"])
    assert status.value.code == 2
    assert "is not empty (first: manifest.csv)" in capsys.readouterr().err
    assert (tmp_path / "manifest.csv").read_text() == "mine\n"
    command = ["data", "phantom", "--out", str(tmp_path), "--labelled", "4", "--force"]
    main([*command, "--unlabelled", "0", "--size", "17", "--workers", "1"])
    assert (tmp_path / "manifest.csv").read_text() != "mine\n"
