"""The plan of a run: its pretraining units and evaluation cells, and the config hash each must
carry (everything its numbers depend on), checked against what the output folder already holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from benchmark.config import config_hash, setting_leaves, validate_settings
from benchmark.errors import UserError
from benchmark.evaluation.protocols import get_protocol
from benchmark.evaluation.shared_encoder import SharedEncoder, read_shared_encoder
from benchmark.registry import get_method
from benchmark.results import Cell, code_version, read_json
from benchmark.rundata import RunData
from benchmark.training.runtime import numerics
from benchmark.training.units import (
    PretrainingUnit,
    pretraining_fingerprint,
    pretraining_units,
    unit_for,
)


class ResultConflictError(UserError):
    """The output folder holds results made with other settings."""


@dataclass
class Plan:
    """The units of a run with the config hash each must carry, and the checked encoder file
    that the cells of a ``shared_encoder`` method (``external``) start from."""

    units: dict[str, list[PretrainingUnit]]
    unit_hashes: dict[Path, str]
    cells: list[Cell]
    cell_fingerprints: dict[Cell, dict]
    shared_encoder: SharedEncoder | None = None


def cell_fingerprint(cfg: DictConfig, cell: Cell, data: RunData, pretraining: dict | None) -> dict:
    """Everything a cell's numbers depend on (the code version and numerics settings too);
    its hash decides whether the cell is done.

    ``pretraining``: the fingerprint of the unit the cell's encoder comes from, or of the shared
    encoder file (``SharedEncoder.fingerprint``), or None for a method without either."""
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
        "code": code_version(),
        "numerics": numerics(cfg.runtime),
        "data": {
            "cohort": data.fingerprint,
            **{k: data.subjects_fingerprint(r) for k, r in rows.items()},
        },
    }


def plan_run(cfg: DictConfig, data: RunData, out: Path) -> Plan:
    """All pretraining units and cells of the configured grid, with their hashes.

    The settings are checked again here (``validate_settings``, as when they were built), so
    that a configuration changed in code after ``load_config`` meets the same rules."""
    validate_settings(cfg)
    _check_split_coverage(cfg, data)
    shared = read_shared_encoder(cfg, out)
    units, unit_hashes, unit_prints, cells, prints = {}, {}, {}, [], {}
    for method in cfg.methods:
        units[method] = pretraining_units(cfg, method, out)
        starts_from = shared.fingerprint() if get_method(method).shared_encoder else None
        for unit in units[method]:
            unit_prints[unit.directory] = pretraining_fingerprint(cfg, unit, data)
            unit_hashes[unit.directory] = config_hash(unit_prints[unit.directory])
        for protocol in evaluated_protocols(cfg, method):
            for fraction in cfg.splits.fractions:
                for fold in range(int(cfg.splits.folds)):
                    for seed in cfg.splits.seeds:
                        cell = Cell(method, protocol, float(fraction), fold, int(seed))
                        unit = unit_for(units[method], cell.seed, cell.fold, cell.fraction)
                        pretraining = unit_prints[unit.directory] if unit else starts_from
                        cells.append(cell)
                        prints[cell] = cell_fingerprint(cfg, cell, data, pretraining)
    return Plan(units, unit_hashes, cells, prints, shared)


def evaluated_protocols(cfg: DictConfig, method: str) -> list[str]:
    """The protocols of ``finetune.protocols`` (checked) that the method may be evaluated by:
    all, or those its ``protocols`` attribute names (a baseline of fixed features is never
    fine-tuned)."""
    for protocol in cfg.finetune.protocols:
        get_protocol(protocol).settings(cfg)
    allowed = get_method(method).protocols
    return [p for p in cfg.finetune.protocols if allowed is None or p in allowed]


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


def describe_difference(out: Path, cfg: DictConfig, conflicts: list[str]) -> str:
    """What differs between the conflicting results and this run: the code version or the
    numerics settings the first conflicting file records, and the settings of ``run.yaml``."""
    said = ""
    record = read_json(Path(conflicts[0])) if conflicts else None
    made = (record or {}).get("config") or {}
    if made.get("code", code_version()) != code_version():
        said += f" The code changed: they were made by {made['code']}, this is {code_version()}."
    if made.get("numerics", numerics(cfg.runtime)) != numerics(cfg.runtime):
        said += (
            f" The numerics settings changed: they were made with {made['numerics']}, this run "
            f"uses {numerics(cfg.runtime)}."
        )
    previous = out / "run.yaml"
    if not previous.exists():
        return said
    try:
        old = OmegaConf.to_container(OmegaConf.load(previous), resolve=True)
    except Exception:  # a run.yaml cut short by an older version, or edited by hand
        return said + f" ({previous} cannot be read, so the changed settings are unknown.)"
    if not isinstance(old, dict):
        return said
    new = OmegaConf.to_container(cfg, resolve=True)
    old, new = dict(setting_leaves(old)), dict(setting_leaves(new))
    changed = [key for key in new if old.get(key) != new[key]]
    if changed:
        said += f" Settings changed since the last run: {', '.join(changed[:12])}."
    return said
