"""The benchmark grid: every method x protocol x label fraction x fold x seed, resumable.

``plan_run`` lists the grid's pretraining units and evaluation cells with the config hash each
must carry. The work is two kinds of task, defined once here whichever executor runs them
(``benchmark.executors``: this process, or Ray workers): a ``UnitTask`` pretrains one unit and
a ``CellTask`` evaluates one cell after the unit whose encoder it starts from. Every finished
unit writes its result file atomically, so a killed run loses at most the epoch in progress: a
re-run skips units whose file holds the same config hash and resumes the others from their
last checkpoint. A unit that fails (for example a non-finite loss) is recorded as failed and
the rest of the grid goes on; a re-run tries it again.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from benchmark.backbone import describe_backbone, stage_widths
from benchmark.config import config_hash, setting_leaves
from benchmark.errors import UserError
from benchmark.executors import get_executor
from benchmark.pretrain import (
    PretrainingUnit,
    is_finished,
    pretraining_fingerprint,
    pretraining_units,
    run_pretraining,
    unit_for,
)
from benchmark.protocols import get_protocol
from benchmark.results import Cell, read_json, versions, write_json_atomic
from benchmark.rundata import RunData, prepare_data
from benchmark.runtime import apply_host_settings, process_ranks


class ResultConflictError(UserError):
    """The output folder holds results made with other settings."""


@dataclass
class Plan:
    """The units of a run with the config hash each must carry."""

    units: dict[str, list[PretrainingUnit]]
    unit_hashes: dict[Path, str]
    cells: list[Cell]
    cell_fingerprints: dict[Cell, dict]


def cell_fingerprint(cfg: DictConfig, cell: Cell, data: RunData, pretraining: dict | None) -> dict:
    """Everything a cell's numbers depend on; its hash decides whether the cell is done."""
    rows = {
        "train": data.training_rows(cell.seed, cell.fold, cell.fraction),
        "val": data.partition_rows(cell.seed, cell.fold, "val"),
        "test": data.partition_rows(cell.seed, cell.fold, "test"),
    }
    return {
        "cell": {
            "method": cell.method,
            "protocol": cell.protocol,
            "fraction": cell.fraction,
            "fold": cell.fold,
            "seed": cell.seed,
        },
        "pretraining": pretraining,
        "protocol": get_protocol(cell.protocol).settings(cfg),
        "backbone": OmegaConf.to_container(cfg.backbone, resolve=True),
        "data": {
            "cohort": data.fingerprint,
            **{k: data.subjects_fingerprint(r) for k, r in rows.items()},
        },
    }


def plan_run(cfg: DictConfig, data: RunData, out: Path) -> Plan:
    """All pretraining units and cells of the configured grid, with their hashes."""
    _check_split_coverage(cfg, data)
    units, unit_hashes, unit_prints, cells, prints = {}, {}, {}, [], {}
    for method in cfg.methods:
        units[method] = pretraining_units(cfg, method, out)
        for unit in units[method]:
            unit_prints[unit.directory] = pretraining_fingerprint(cfg, unit, data)
            unit_hashes[unit.directory] = config_hash(unit_prints[unit.directory])
        for protocol in cfg.finetune.protocols:
            get_protocol(protocol).settings(cfg)
            for fraction in cfg.splits.fractions:
                for fold in range(int(cfg.splits.folds)):
                    for seed in cfg.splits.seeds:
                        cell = Cell(method, protocol, float(fraction), fold, int(seed))
                        unit = unit_for(units[method], cell.seed, cell.fold, cell.fraction)
                        pretraining = unit_prints[unit.directory] if unit else None
                        cells.append(cell)
                        prints[cell] = cell_fingerprint(cfg, cell, data, pretraining)
    return Plan(units, unit_hashes, cells, prints)


def _check_split_coverage(cfg: DictConfig, data: RunData) -> None:
    splits = data.splits
    for seed in cfg.splits.seeds:
        for fold in range(int(cfg.splits.folds)):
            if not ((splits["seed"] == seed) & (splits["fold"] == fold)).any():
                raise UserError(
                    f"the split file has no seed {seed} fold {fold}, but the settings ask for "
                    f"splits.seeds={list(cfg.splits.seeds)} and splits.folds={cfg.splits.folds}; "
                    "make a split file with those seeds and folds or change the settings"
                )


def find_conflicts(plan: Plan, out: Path) -> list[str]:
    """Result files in ``out`` that the plan would write but that other settings produced."""
    conflicts = []
    for directory, expected in plan.unit_hashes.items():
        record = read_json(directory / "pretrain.json")
        if record and record.get("config_hash") != expected:
            conflicts.append(str(directory / "pretrain.json"))
    for cell in plan.cells:
        record = read_json(cell.path(out))
        if record and record.get("status") == "done":
            if record.get("config_hash") != config_hash(plan.cell_fingerprints[cell]):
                conflicts.append(str(cell.path(out)))
    return conflicts


def _describe_difference(out: Path, cfg: DictConfig) -> str:
    previous = out / "run.yaml"
    if not previous.exists():
        return ""
    old = OmegaConf.to_container(OmegaConf.load(previous), resolve=True)
    new = OmegaConf.to_container(cfg, resolve=True)
    old, new = dict(setting_leaves(old)), dict(setting_leaves(new))
    changed = [key for key in new if old.get(key) != new[key]]
    return f" Settings changed since the last run: {', '.join(changed[:12])}." if changed else ""


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

    def finished(self) -> UnitOutcome | None:
        """The outcome of a unit finished before with these settings; ``None`` if it must run."""
        if is_finished(self.unit, self.expected_hash):
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
    without pretraining): an executor runs the cell after that unit.
    """

    cfg: DictConfig
    out: Path
    cell: Cell
    fingerprint: dict
    unit: PretrainingUnit | None

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
            encoder = upstream.encoder if upstream else None
            result = get_protocol(self.cell.protocol)(self.cell, self.cfg, data, encoder, workdir)
        except (KeyboardInterrupt, UserError):
            raise
        except Exception as error:
            return self.record_failure(error, time.perf_counter() - started)
        record = {**self._record(), **result, "status": "done"}
        record["seconds"] = round(time.perf_counter() - started, 2)
        write_json_atomic(self.path, record)
        return (
            f"AUPRC {record['metrics']['auprc']:.3f} (prevalence {record['prevalence']:.2f}) "
            f"in {record['seconds']:.1f} s"
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
        return {
            "method": cell.method,
            "protocol": cell.protocol,
            "fraction": cell.fraction,
            "fold": cell.fold,
            "seed": cell.seed,
            "profile": cfg.profile,
            "backbone": describe_backbone(stage_widths(float(cfg.backbone.width_multiplier))),
            "config_hash": config_hash(self.fingerprint),
            "config": self.fingerprint,
            "versions": versions(),
        }


def _failure_text(what: str, error: BaseException) -> str:
    trace = "".join(traceback.format_exception(error))
    return f"{what} failed: {type(error).__name__}: {error}\n{trace}"


@dataclass
class GridRun:
    """A planned run as an executor sees it: the tasks of each method, and the progress log.

    An executor runs every method's unit tasks, each cell task after its unit, and reports
    each cell with ``cell_finished`` (the log's ``[done/total]`` counter counts skipped cells).
    """

    cfg: DictConfig
    out: Path
    data: RunData
    plan: Plan
    log: Callable[[str], None]
    cells_finished: int = 0

    def unit_tasks(self, method: str) -> list[UnitTask]:
        return [
            UnitTask(self.cfg, self.out, unit, self.plan.unit_hashes[unit.directory])
            for unit in self.plan.units[method]
        ]

    def cell_tasks(self, method: str) -> list[CellTask]:
        units = self.plan.units[method]
        return [
            CellTask(
                self.cfg,
                self.out,
                cell,
                self.plan.cell_fingerprints[cell],
                unit_for(units, cell.seed, cell.fold, cell.fraction),
            )
            for cell in self.plan.cells
            if cell.method == method
        ]

    def cell_finished(self, task: CellTask, summary: str | None) -> None:
        """Count a cell; log its summary unless it was skipped (``None``: done before)."""
        self.cells_finished += 1
        if summary is not None:
            total = len(self.plan.cells)
            self.log(f"[{self.cells_finished}/{total}] {task.cell.title}: {summary}")


def run_grid(cfg: DictConfig, out: Path, force: bool = False, quiet: bool = False) -> Plan:
    """Run every unfinished unit of the grid under ``out`` with the configured executor
    (``executor.name``, ``benchmark.executors``); returns the plan that ran."""
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
            f"{conflicts[0]}).{_describe_difference(out, cfg)} Use another --out, or --force "
            "to recompute and overwrite them."
        )
    for path in conflicts:
        log(f"--force: recomputing {path}")
    if main_rank:
        OmegaConf.save(cfg, out / "run.yaml")
    executor.run(GridRun(cfg, out, data, plan, log))
    return plan
