"""The two kinds of work of a grid, defined once whichever executor runs them.

A ``UnitTask`` pretrains one unit; a ``CellTask`` evaluates one cell after the unit whose
encoder it starts from and writes its cell file atomically. ``GridRun`` is a planned run as an
executor sees it: the tasks of each method and the progress log.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from benchmark.config import config_hash, method_hparams
from benchmark.errors import UserError
from benchmark.evaluation.protocols import get_protocol
from benchmark.nn.backbone import describe_backbone, stage_widths
from benchmark.orchestration.plan import Plan
from benchmark.orchestration.progress import GridProgress
from benchmark.registry import get_method
from benchmark.results import Cell, describe_set_aside, read_json, versions, write_json_atomic
from benchmark.rundata import RunData
from benchmark.training.pretrain import run_pretraining
from benchmark.training.runtime import apply_host_settings, process_ranks
from benchmark.training.units import PretrainingUnit, is_finished, unit_for


@dataclass(frozen=True)
class UnitOutcome:
    """How a pretraining unit ended: the encoder it exported, or why it failed."""

    encoder: Path | None
    failure: str | None = None


@dataclass(frozen=True)
class UnitTask:
    """Pretrain one unit: the work an executor runs for each pretraining unit."""

    cfg: DictConfig
    out: Path
    unit: PretrainingUnit
    expected_hash: str

    def finished(self, log: Callable[[str], None]) -> UnitOutcome | None:
        """The outcome of a unit finished before with these settings; ``None`` if it must run
        (also when its ``encoder.pt`` did not load: it is set aside, and ``log`` says so)."""
        moves = process_ranks(self.cfg.runtime).is_main
        if is_finished(self.unit, self.expected_hash, log, moves):
            return UnitOutcome(self.unit.encoder_path)
        return None

    def __call__(self, data: RunData, log: Callable[[str], None]) -> UnitOutcome:
        """Pretrain (or resume) the unit; any failure but the user's is returned, not raised."""
        try:
            return UnitOutcome(run_pretraining(self.cfg, self.unit, data, log))
        except (KeyboardInterrupt, UserError):
            raise
        except Exception as error:  # the rest of the grid goes on; the report shows it
            failure = _failure_text(f"pretraining {self.unit.title}", error)
            log(failure.splitlines()[0])
            return UnitOutcome(None, failure)


@dataclass(frozen=True)
class CellTask:
    """Evaluate one cell and write its file: the work an executor runs for each cell.

    ``unit`` is the pretraining unit whose encoder the cell starts from (``None`` for methods
    without pretraining): an executor runs the cell after that unit. ``encoder_file``: the
    shared encoder the cell starts from instead (the ``external`` method's ``finetune.encoder``).
    """

    cfg: DictConfig
    out: Path
    cell: Cell
    fingerprint: dict
    unit: PretrainingUnit | None
    encoder_file: Path | None = None

    @property
    def path(self) -> Path:
        return self.cell.path(self.out)

    def is_done(self) -> bool:
        """True when the cell file says done with this cell's config hash."""
        existing = read_json(self.path)
        return bool(
            existing
            and existing.get("status") == "done"
            and existing.get("config_hash") == config_hash(self.fingerprint)
        )

    def __call__(self, data: RunData, upstream: UnitOutcome | None) -> str | None:
        """Evaluate the cell unless it is done; returns the summary the progress log shows."""
        if self.is_done():
            return None
        apply_host_settings(self.cfg.runtime)
        started = time.perf_counter()
        workdir = self.out / "work" / self.path.relative_to(self.out / "cells").with_suffix("")
        try:
            if upstream and upstream.failure:
                raise RuntimeError(upstream.failure.splitlines()[0])
            encoder = upstream.encoder if upstream else self.encoder_file
            result = get_protocol(self.cell.protocol)(self.cell, self.cfg, data, encoder, workdir)
        except (KeyboardInterrupt, UserError):
            raise
        except Exception as error:
            return self.record_failure(error, time.perf_counter() - started)
        record = {**self._record(), **result, "status": "done"}
        record["seconds"] = round(time.perf_counter() - started, 2)
        write_json_atomic(self.path, record)
        set_aside = "".join(
            f"; {describe_set_aside(entry, workdir)}" for entry in result.get("set_aside", ())
        )
        return (
            f"AUPRC {record['metrics']['auprc']:.3f} (prevalence {record['prevalence']:.2f}) "
            f"in {record['seconds']:.1f} s{set_aside}"
        )

    def record_failure(self, error: BaseException, seconds: float = 0.0) -> str:
        """Write the cell file as failed (unless the cell is done); returns the summary.

        Also for executors whose worker died while running the cell.
        """
        summary = f"FAILED: {type(error).__name__}: {error}".splitlines()[0]
        if not self.is_done():
            record = {**self._record(), "status": "failed"}
            record.update(error=_failure_text(self.cell.title, error), seconds=round(seconds, 2))
            write_json_atomic(self.path, record)
        return f"{summary} in {seconds:.1f} s"

    def _record(self) -> dict:
        cell, cfg = self.cell, self.cfg
        method = get_method(cell.method)
        return {
            "method": cell.method,
            "method_label": method_label(cfg, cell.method),
            # What the method is in a comparison, for the report (SSLMethod.role, .protocols).
            "role": method.role,
            "evaluated_by": None if method.protocols is None else list(method.protocols),
            "protocol": cell.protocol,
            "fraction": cell.fraction,
            "fold": cell.fold,
            "seed": cell.seed,
            "profile": cfg.profile,
            "backbone": describe_backbone(stage_widths(float(cfg.backbone.width_multiplier))),
            "pretraining": self._pretraining(),
            "config_hash": config_hash(self.fingerprint),
            "config": self.fingerprint,
            "encoder_file": None if self.encoder_file is None else str(self.encoder_file),
            "versions": versions(),
        }

    def _pretraining(self) -> dict | None:
        """Which pretraining the cell's encoder comes from: its folder in the run and the
        random seed it was pretrained with (None for methods without pretraining)."""
        if self.unit is None:
            return None
        return {
            "seed": int(self.fingerprint["pretraining"]["pretrain"]["seed"]),
            "unit": self.unit.directory.relative_to(self.out).as_posix(),
            # A resumed pretraining continues the same schedules and random streams; say so.
            "resumed_at_epoch": (read_json(self.unit.record_path) or {}).get("resumed_at_epoch"),
        }


def method_label(cfg: DictConfig, method: str) -> str:
    """The name tables give ``method`` with this run's settings (``SSLMethod.display_name``)."""
    return get_method(method).display_name(method_hparams(cfg, method))


def _failure_text(what: str, error: BaseException) -> str:
    trace = "".join(traceback.format_exception(error))
    return f"{what} failed: {type(error).__name__}: {error}\n{trace}"


@dataclass
class GridRun:
    """A planned run as an executor sees it: the tasks of each method, and the progress log.

    An executor runs every method's unit tasks (through ``run_unit``, or reporting each with
    ``unit_finished``), each cell task after its unit, and reports each cell with
    ``cell_finished`` (the log's ``[done/total]`` counter counts skipped cells). ``progress``
    draws the grid's progress line and estimates the time left.
    """

    cfg: DictConfig
    out: Path
    data: RunData
    plan: Plan
    log: Callable[[str], None]
    cells_finished: int = 0
    progress: GridProgress | None = None

    def run_unit(self, task: UnitTask) -> UnitOutcome:
        """Run a unit task in this process unless it is finished, with its progress reported."""
        outcome = task.finished(self.log)
        ran = outcome is None
        if ran:
            if self.progress:
                self.progress.unit_started(task.unit.title)
            outcome = task(self.data, self.log)
        self.unit_finished(task, ran)
        return outcome

    def unit_finished(self, task: UnitTask, ran: bool = True) -> None:
        """Count a unit (``ran`` False: finished before, so it took no time)."""
        if self.progress:
            self.progress.unit_finished(task.unit.title, ran)

    def unit_tasks(self, method: str) -> list[UnitTask]:
        return [
            UnitTask(self.cfg, self.out, unit, self.plan.unit_hashes[unit.directory])
            for unit in self.plan.units[method]
        ]

    def cell_tasks(self, method: str) -> list[CellTask]:
        units = self.plan.units[method]
        shared = self.plan.shared_encoder if get_method(method).shared_encoder else None
        return [
            CellTask(
                self.cfg,
                self.out,
                cell,
                self.plan.cell_fingerprints[cell],
                unit_for(units, cell.seed, cell.fold, cell.fraction),
                None if shared is None else shared.path,
            )
            for cell in self.plan.cells
            if cell.method == method
        ]

    def cell_finished(self, task: CellTask, summary: str | None) -> None:
        """Count a cell; log its summary unless it was skipped (``None``: done before)."""
        self.cells_finished += 1
        if self.progress:
            self.progress.cell_finished(task.cell.title, summary is not None)
        if summary is not None:
            total = len(self.plan.cells)
            left = f"; {self.progress.estimate()}" if self.progress else ""
            self.log(f"[{self.cells_finished}/{total}] {task.cell.title}: {summary}{left}")
