"""Where the grid's tasks run: in this process (``local``) or as Ray tasks (``ray``).

``executor.name`` (``ssl3d run --executor``) picks one; both run the same ``UnitTask`` and
``CellTask`` (``benchmark/orchestration/tasks.py``), so the result files do not depend on the executor.

``ray`` submits every unfinished pretraining unit and evaluation cell as a Ray task, each cell
with its unit's result as an argument, so Ray starts a cell once its encoder exists (a
fold-scoped method's cells wait for their own (seed, fold) unit only). A unit asks for
``executor.pretrain_gpus`` GPUs and a cell for ``executor.cell_gpus`` (a fraction lets several
small fine-tunes share a GPU); no GPU is asked for on a cluster without GPUs or with
``runtime.device=cpu``. Workers load the run data from the run folder, which the driver
prepared before submitting anything, and write their result files there (on a cluster it
must be a shared file system). The driver logs each finished task in ``OUT/run.log``, with
the lines the task logged. A task whose worker dies is retried ``executor.max_retries`` times;
then its cell file is written as failed and the rest of the run goes on (a re-run redoes it).
Ray is an optional extra (``pip install ssl3d[ray]``), imported only when chosen.
"""

from __future__ import annotations

import importlib
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from benchmark.config import config_hash
from benchmark.errors import UserError
from benchmark.orchestration.tasks import CellTask, GridRun, UnitOutcome, UnitTask
from benchmark.registry import Registry
from benchmark.rundata import RunData, prepare_data
from benchmark.training.runtime import process_ranks


class ExecutorSettingError(UserError):
    """An ``executor`` setting that cannot be used (or Ray missing for ``executor.name=ray``)."""


class Executor(typing.Protocol):
    """What runs a planned grid (``GridRun``)."""

    def run(self, grid: GridRun) -> None:
        """Run every task of the grid, each cell after its unit, reporting each cell."""


class LocalExecutor:
    """Runs the grid in this process, method by method: its units, then its cells.

    Under data-parallel pretraining (``runtime.devices`` x ``runtime.num_nodes`` > 1) every
    rank runs this same command, so every rank pretrains every unit first, in one order (they
    meet in the same collectives, and none waits on another's cells); then rank 0 alone
    evaluates the cells, each on one device.
    """

    def run(self, grid: GridRun) -> None:
        ranks = process_ranks(grid.cfg.runtime)
        methods = list(grid.cfg.methods)
        for group in [methods] if ranks.world_size > 1 else [[m] for m in methods]:
            outcomes = {
                task.unit: grid.run_unit(task)
                for method in group
                for task in grid.unit_tasks(method)
            }
            if not ranks.is_main:
                continue
            for task in (task for method in group for task in grid.cell_tasks(method)):
                grid.cell_finished(task, task(grid.data, outcomes.get(task.unit)))


class RayExecutor:
    """Runs the grid's tasks on Ray: a local instance, or the cluster at ``executor.address``.

    When Ray is already initialised (``ray.init`` called by the caller) that instance is used
    as it is and left running.
    """

    def __init__(self, settings: DictConfig):
        self.settings = settings
        self.ray = import_ray()

    def run(self, grid: GridRun) -> None:
        ray = self.ray
        initialised_here = not ray.is_initialized()
        if initialised_here:
            ray.init(address=self.settings.address)
        try:
            self._run(grid)
        finally:
            if initialised_here:
                ray.shutdown()

    def _run(self, grid: GridRun) -> None:
        ray, settings = self.ray, self.settings
        gpus = grid.cfg.runtime.device != "cpu" and ray.cluster_resources().get("GPU", 0) > 0
        retries = int(settings.max_retries)
        pretrain = ray.remote(
            num_cpus=float(settings.pretrain_cpus),
            num_gpus=float(settings.pretrain_gpus) if gpus else 0,
            max_retries=retries,
            num_returns=2,
        )(_pretrain_in_worker)
        evaluate = ray.remote(
            num_cpus=float(settings.cell_cpus),
            num_gpus=float(settings.cell_gpus) if gpus else 0,
            max_retries=retries,
        )(_evaluate_in_worker)
        data = data_identity(grid.cfg, grid.out, grid.data)
        units: dict[Any, tuple[UnitTask, Any]] = {}  # outcome ref -> (task, log lines ref)
        cells: dict[Any, CellTask] = {}
        for method in grid.cfg.methods:
            upstream: dict = {}
            for task in grid.unit_tasks(method):
                upstream[task.unit] = task.finished(grid.log)
                if upstream[task.unit] is not None:
                    grid.unit_finished(task, ran=False)
                else:
                    upstream[task.unit], lines = pretrain.remote(task, data)
                    units[upstream[task.unit]] = (task, lines)
            for task in grid.cell_tasks(method):
                if task.is_done():
                    grid.cell_finished(task, None)
                else:
                    cells[evaluate.remote(task, data, upstream.get(task.unit))] = task
        try:
            while units or cells:
                (ref,), _ = ray.wait([*units, *cells], num_returns=1)
                if ref in units:
                    self._unit_finished(grid, *units.pop(ref), ref)
                else:
                    self._cell_finished(grid, cells.pop(ref), ref)
        finally:
            for ref in [*units, *cells]:
                ray.cancel(ref, force=True)

    def _unit_finished(self, grid: GridRun, task: UnitTask, lines: Any, outcome: Any) -> None:
        grid.unit_finished(task)
        try:
            for line in self._result(lines):
                grid.log(line)
            self._result(outcome)
        except self.ray.exceptions.RayError as error:  # its cells fail with this error
            grid.log(f"pretraining {task.unit.title} failed: {_first_line(error)}")

    def _cell_finished(self, grid: GridRun, task: CellTask, summary: Any) -> None:
        try:
            summary = self._result(summary)
        except self.ray.exceptions.RayError as error:  # a dead worker, or a dead unit's worker
            summary = task.record_failure(error)
        grid.cell_finished(task, summary)

    def _result(self, ref: Any) -> Any:
        """The task's result; a ``UserError`` raised in the task is raised here as itself."""
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as error:
            if isinstance(error.cause, UserError):
                raise error.cause from None
            raise


EXECUTORS: Registry[Callable[[DictConfig], Executor]] = Registry(
    "executor", "executor.name", ExecutorSettingError
)
EXECUTORS.register("local", lambda settings: LocalExecutor())
EXECUTORS.register("ray", RayExecutor)


def get_executor(settings: DictConfig) -> Executor:
    """The executor ``executor.name`` names, with its settings checked."""
    make = EXECUTORS.get(settings.name)
    for key in ("pretrain_gpus", "cell_gpus", "pretrain_cpus", "cell_cpus", "max_retries"):
        if not isinstance(settings[key], (int, float)) or settings[key] < 0:
            raise ExecutorSettingError(
                f"executor.{key} must be a number >= 0, got {settings[key]!r}"
            )
    return make(settings)


def import_ray():
    """The ``ray`` module, or a ``UserError`` saying how to install it."""
    try:
        return importlib.import_module("ray")
    except ImportError as error:
        raise ExecutorSettingError(
            f"executor.name=ray (--executor ray) needs Ray, which is not installed ({error}); "
            "install it with `pip install ssl3d[ray]`"
        ) from None


def data_identity(cfg: DictConfig, out: Path, data: RunData) -> tuple[str, str]:
    """What the driver's run data is: the settings prepare_data read, and the cohort's
    fingerprint. A worker checks its copy against it."""
    settings = {key: OmegaConf.to_container(cfg[key]) for key in ("data", "phantom", "splits")}
    return config_hash({"out": str(out), **settings}), data.fingerprint


_worker_data: dict[tuple[str, str], RunData] = {}


def worker_data(cfg: DictConfig, out: Path, identity: tuple[str, str]) -> RunData:
    """The run data in a worker: read from the run folder the driver prepared (the cached
    cohort and splits), once per worker process and run."""
    if identity not in _worker_data:
        data = prepare_data(cfg, out, lambda message: None)
        if data.fingerprint != identity[1]:
            raise RuntimeError(
                f"the cohort under {out} changed while the run was going on (fingerprint "
                f"{data.fingerprint}, the driver's {identity[1]})"
            )
        _worker_data.clear()
        _worker_data[identity] = data
    return _worker_data[identity]


def _pretrain_in_worker(task: UnitTask, identity: tuple[str, str]) -> tuple[UnitOutcome, list]:
    lines: list[str] = []
    outcome = task(worker_data(task.cfg, task.out, identity), lines.append)
    return outcome, lines


def _evaluate_in_worker(
    task: CellTask, identity: tuple[str, str], upstream: UnitOutcome | None
) -> str | None:
    return task(worker_data(task.cfg, task.out, identity), upstream)


def _first_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}".splitlines()[0]
