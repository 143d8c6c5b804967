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
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from benchmark.orchestration.executors import get_executor
from benchmark.orchestration.plan import (
    Plan,
    ResultConflictError,
    describe_difference,
    find_conflicts,
    plan_run,
)
from benchmark.orchestration.tasks import GridRun
from benchmark.rundata import prepare_data
from benchmark.training.runtime import process_ranks

__all__ = ["ResultConflictError", "run_grid"]


class RunLog:
    """Prints progress lines and appends them to ``OUT/run.log``."""

    def __init__(self, out: Path, quiet: bool = False):
        self.path = out / "run.log"
        self.quiet = quiet
        self.started = time.perf_counter()

    def __call__(self, message: str) -> None:
        line = f"[{time.perf_counter() - self.started:7.1f}s] {message}"
        if not self.quiet:
            print(line, flush=True)
        with self.path.open("a") as handle:
            handle.write(line + "\n")


def run_grid(cfg: DictConfig, out: Path, force: bool = False, quiet: bool = False) -> Plan:
    """Run every unfinished unit of the grid under ``out`` with the configured executor
    (``executor.name``, ``benchmark.orchestration.executors``); returns the plan that ran."""
    executor = get_executor(cfg.executor)
    out = Path(out).absolute()  # executors' worker processes may start in another folder
    out.mkdir(parents=True, exist_ok=True)
    main_rank = process_ranks(cfg.runtime).is_main  # data-parallel ranks > 0 write nothing
    log = RunLog(out, quiet) if main_rank else (lambda message: None)
    log(f"profile {cfg.profile} ({cfg.profile_reason}); methods: {', '.join(cfg.methods)}")
    data = prepare_data(cfg, out, log)
    plan = plan_run(cfg, data, out)
    conflicts = find_conflicts(plan, out)
    if conflicts and not force:
        raise ResultConflictError(
            f"{out} holds {len(conflicts)} result(s) made with other settings (first: "
            f"{conflicts[0]}).{describe_difference(out, cfg, conflicts)} Use another --out, or --force "
            "to recompute and overwrite them."
        )
    for path in conflicts:
        log(f"--force: recomputing {path}")
    if main_rank:
        OmegaConf.save(cfg, out / "run.yaml")
    executor.run(GridRun(cfg, out, data, plan, log))
    return plan
