"""The benchmark grid: every method x protocol x label fraction x fold x seed, resumable.

``plan_run`` lists the grid's pretraining units and evaluation cells with the config hash each
must carry. The work is two kinds of task, defined once here whichever executor runs them
(``benchmark/orchestration/executors.py``: this process, or Ray workers): a ``UnitTask``
pretrains one unit and a ``CellTask`` evaluates one cell after the unit whose encoder it starts from. Every finished
unit writes its result file atomically, so a killed run loses at most the epoch in progress: a
re-run skips units whose file holds the same config hash and resumes the others from their
last checkpoint. A unit that fails (for example a non-finite loss) is recorded as failed and
the rest of the grid goes on; a re-run tries it again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from benchmark.files import write_atomic
from benchmark.orchestration.executors import Executor, get_executor
from benchmark.orchestration.lock import run_folder_lock
from benchmark.orchestration.plan import (
    Plan,
    ResultConflictError,
    describe_difference,
    find_conflicts,
    plan_run,
)
from benchmark.orchestration.progress import GridProgress
from benchmark.orchestration.tasks import GridRun
from benchmark.rundata import stage_data
from benchmark.training.runtime import check_logger, process_ranks

__all__ = ["ResultConflictError", "run_grid"]


class RunLog:
    """Prints progress lines and appends them to ``OUT/run.log``; on a terminal the grid's
    progress line (``progress``) stays below them.

    Until ``keep`` is called the lines are only printed and held: a run refused by its checks
    leaves ``run.log`` as it was."""

    def __init__(self, out: Path, quiet: bool = False):
        self.path = out / "run.log"
        self.quiet = quiet
        self.started = time.perf_counter()
        self.held: list[str] | None = []
        self.progress: GridProgress | None = None

    def __call__(self, message: str) -> None:
        line = f"[{time.perf_counter() - self.started:7.1f}s] {message}"
        if not self.quiet:
            if self.progress:
                self.progress.clear()
            print(line, flush=True)
            if self.progress:
                self.progress.redraw()
        if self.held is not None:
            self.held.append(line)
            return
        with self.path.open("a") as handle:
            handle.write(line + "\n")

    def keep(self) -> None:
        """From now on lines go to ``run.log`` too, starting with those held so far."""
        lines, self.held = self.held or [], None
        with self.path.open("a") as handle:
            handle.writelines(line + "\n" for line in lines)


def run_grid(
    cfg: DictConfig,
    out: Path,
    force: bool = False,
    quiet: bool = False,
    on_accept: Callable[[], None] | None = None,
) -> Plan:
    """Run every unfinished unit of the grid under ``out`` with the configured executor
    (``executor.name``, ``benchmark.orchestration.executors``); returns the plan that ran.

    Every check that can refuse the run (the executor and logger installed, the folder's lock,
    results made with other settings) comes before anything under ``out`` is written: a
    refused run leaves the folder as it was.
    ``on_accept`` runs once the checks passed, before the grid (the caller's own files)."""
    executor = get_executor(cfg.executor)
    check_logger(cfg.runtime)
    out = Path(out).absolute()  # executors' worker processes may start in another folder
    main_rank = process_ranks(cfg.runtime).is_main  # data-parallel ranks > 0 write nothing
    if not main_rank:
        return _run_checked(cfg, out, executor, None, force, on_accept)
    log = RunLog(out, quiet)
    with run_folder_lock(out, "ssl3d run", log):
        return _run_checked(cfg, out, executor, log, force, on_accept)


def _run_checked(
    cfg: DictConfig,
    out: Path,
    executor: Executor,
    run_log: RunLog | None,
    force: bool,
    on_accept: Callable[[], None] | None,
) -> Plan:
    """The run after its lock: ``run_log`` is None in data-parallel ranks > 0 (they only
    pretrain, and write nothing)."""
    log = run_log or (lambda message: None)
    log(f"profile {cfg.profile} ({cfg.profile_reason}); methods: {', '.join(cfg.methods)}")
    pending = stage_data(cfg, out, log)
    plan = plan_run(cfg, pending.data, out)
    conflicts = find_conflicts(plan, out)
    if conflicts and not force:
        pending.discard()
        raise ResultConflictError(
            f"{out} holds {len(conflicts)} result(s) made with other settings (first: "
            f"{conflicts[0]}).{describe_difference(out, cfg, conflicts)} Use another --out, or --force "
            "to recompute and overwrite them."
        )
    if run_log:
        pending.commit()
        run_log.keep()
        write_atomic(out / "run.yaml", OmegaConf.to_yaml(cfg))
        if on_accept:
            on_accept()
    for path in conflicts:
        log(f"--force: recomputing {path}")
    units = sum(len(method_units) for method_units in plan.units.values())
    draw = False if run_log is None or run_log.quiet else None
    progress = GridProgress(units, len(plan.cells), draw=draw)
    if run_log:
        run_log.progress = progress
    try:
        executor.run(GridRun(cfg, out, pending.data, plan, log, progress=progress))
    finally:
        progress.clear()
    return plan
