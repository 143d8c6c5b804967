"""The benchmark grid: every method x protocol x label fraction x fold x seed, resumable.

Pretraining units run first for each method, then its evaluation cells. Every finished unit
writes its result file atomically, so a killed run loses at most the epoch in progress: a
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
from benchmark.pretrain import (
    PretrainingUnit,
    pretraining_fingerprint,
    pretraining_units,
    run_pretraining,
    unit_for,
)
from benchmark.protocols import get_protocol
from benchmark.results import Cell, read_json, versions, write_json_atomic
from benchmark.rundata import RunData, prepare_data


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
                        unit = unit_for(units[method], cell.seed, cell.fold)
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


def run_grid(cfg: DictConfig, out: Path, force: bool = False, quiet: bool = False) -> Plan:
    """Run every unfinished unit of the grid under ``out``; returns the plan that ran."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log = RunLog(out, quiet)
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
    OmegaConf.save(cfg, out / "run.yaml")

    total = len(plan.cells)
    done = 0
    for method in cfg.methods:
        encoders, failures = {}, {}
        for unit in plan.units[method]:
            try:
                encoders[unit.directory] = run_pretraining(cfg, unit, data, log)
            except (KeyboardInterrupt, UserError):
                raise
            except Exception as error:  # the rest of the grid goes on; the report shows it
                failures[unit.directory] = _failure_text(f"pretraining {unit.title}", error)
                log(failures[unit.directory].splitlines()[0])
        for cell in (c for c in plan.cells if c.method == method):
            done += 1
            unit = unit_for(plan.units[method], cell.seed, cell.fold)
            failure = failures.get(unit.directory) if unit else None
            _run_cell(
                cfg,
                cell,
                plan,
                data,
                out,
                encoders.get(unit.directory) if unit else None,
                failure,
                log,
                f"[{done}/{total}]",
            )
    return plan


def _failure_text(what: str, error: BaseException) -> str:
    return f"{what} failed: {type(error).__name__}: {error}\n{traceback.format_exc()}"


def _run_cell(
    cfg: DictConfig,
    cell: Cell,
    plan: Plan,
    data: RunData,
    out: Path,
    encoder: Path | None,
    upstream_failure: str | None,
    log: Callable[[str], None],
    counter: str,
) -> None:
    fingerprint = plan.cell_fingerprints[cell]
    expected = config_hash(fingerprint)
    path = cell.path(out)
    existing = read_json(path)
    if existing and existing.get("status") == "done" and existing.get("config_hash") == expected:
        return
    record = {
        "method": cell.method,
        "protocol": cell.protocol,
        "fraction": cell.fraction,
        "fold": cell.fold,
        "seed": cell.seed,
        "profile": cfg.profile,
        "backbone": describe_backbone(stage_widths(float(cfg.backbone.width_multiplier))),
        "config_hash": expected,
        "config": fingerprint,
        "versions": versions(),
    }
    started = time.perf_counter()
    workdir = out / "work" / path.relative_to(out / "cells").with_suffix("")
    try:
        if upstream_failure:
            raise RuntimeError(upstream_failure.splitlines()[0])
        record.update(get_protocol(cell.protocol)(cell, cfg, data, encoder, workdir))
        record["status"] = "done"
        message = f"AUPRC {record['metrics']['auprc']:.3f} (prevalence {record['prevalence']:.2f})"
    except (KeyboardInterrupt, UserError):
        raise
    except Exception as error:
        record.update(status="failed", error=_failure_text(cell.title, error))
        message = f"FAILED: {type(error).__name__}: {error}"
    record["seconds"] = round(time.perf_counter() - started, 2)
    write_json_atomic(path, record)
    log(f"{counter} {cell.title}: {message} in {record['seconds']:.1f} s")
