"""The cells of a run folder, checked before anything is averaged.

- The expected grid is the one of ``OUT/run.yaml`` (methods x ``finetune.protocols`` x
  ``splits.fractions`` x folds x ``splits.seeds``), extended to every method and protocol found
  on disk: an expected cell without a file, or with an unreadable one, is ``missing``; a cell
  that ran and failed is ``failed``. Neither is ever averaged in as a zero.
- One table compares cells of one configuration only. Cells made with another profile,
  backbone, cohort or test set (compared per seed and fold: rotating test folds differ), a protocol's cells made with different protocol settings, or a
  method's cells from different pretrainings make the report refuse, naming what differs and
  where (``MixedConfigurationError``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from benchmark.config import setting_leaves
from benchmark.errors import UserError
from benchmark.results import cell_rows, read_json

KEY = ["method", "protocol", "fraction", "fold", "seed"]


class MixedConfigurationError(UserError):
    """A run folder holding cells of more than one configuration."""


@dataclass
class RunResults:
    """Every expected or present cell of a run folder and the records of the finished ones.

    ``cells`` has one row per cell: ``KEY``, ``status`` (``done``, ``failed`` or ``missing``),
    the metrics, ``prevalence``, ``threshold``, ``backbone``, ``profile`` and ``path``.
    ``records`` maps the key tuple of each finished cell to its cell-file record. ``notes``
    say what was left out or could not be read, for the report to print.
    """

    out: Path
    cells: pd.DataFrame
    records: dict[tuple, dict[str, Any]]
    settings: dict[str, Any] | None
    notes: list[str] = field(default_factory=list)

    @property
    def done(self) -> pd.DataFrame:
        return self.cells[self.cells["status"] == "done"]

    @property
    def labels(self) -> dict[str, str]:
        """Method -> the name its cells record (``method_label``, from the method's
        ``display_name`` at run time); cells written before that field keep the method's name."""
        return {
            str(record["method"]): str(record.get("method_label") or record["method"])
            for record in self.records.values()
        }

    @property
    def view_presets(self) -> dict[str, str]:
        """Pretrained method -> the views preset it pretrained with (``own settings`` for a
        views section without a preset), read from the settings its cells record."""
        presets = {}
        for record in self.records.values():
            pretraining = (record.get("config") or {}).get("pretraining") or {}
            views = (pretraining.get("settings") or {}).get("views")
            if views is not None:
                presets[str(record["method"])] = views.get("preset") or "own settings"
        return presets


def cell_problem(record: Any, path: Path) -> str | None:
    """Why a cell file cannot be used (None when it can): not a mapping, a missing or mistyped
    key field, another grid position than its path's, an unknown status, or a finished cell
    without its metrics."""
    if not isinstance(record, dict):
        return "it is not a cell record"
    missing = [key for key in KEY if key not in record]
    if missing:
        return f"it lacks {', '.join(missing)}"
    try:
        key = cell_key(record)
    except (TypeError, ValueError):
        return "its method, protocol, fraction, fold or seed has the wrong type"
    expected = (path.parts[-5], path.parts[-4], path.parts[-3], path.parts[-2], path.stem)
    found = (key[0], key[1], f"f{key[2]:g}", f"fold{key[3]}", f"seed{key[4]}")
    if found != expected:
        return f"it records the cell {'/'.join(found)}, not the one its path names"
    status = record.get("status")
    if status not in ("done", "failed"):
        return f"its status is {status!r}, not done or failed"
    metrics = record.get("metrics")
    if status == "done" and not (
        isinstance(metrics, dict) and isinstance(metrics.get("auprc"), (int, float))
    ):
        return "it says done but holds no AUPRC"
    return None


def cell_status(cells: pd.DataFrame) -> pd.DataFrame:
    """Per protocol: cells done, failed and missing, and the first failure's error line."""
    rows = []
    for protocol, group in cells.groupby("protocol", sort=False):
        counts = group["status"].value_counts()
        failed = group[group["status"] == "failed"]
        errors = failed["error"].dropna() if "error" in failed else pd.Series(dtype=str)
        rows.append(
            {
                "protocol": protocol,
                "planned": len(group),
                "done": int(counts.get("done", 0)),
                "failed": int(counts.get("failed", 0)),
                "missing": int(counts.get("missing", 0)),
                "first_error": str(errors.iloc[0]).splitlines()[0] if len(errors) else "",
            }
        )
    return pd.DataFrame(rows)


def cell_key(record: dict[str, Any]) -> tuple:
    return (
        str(record["method"]),
        str(record["protocol"]),
        float(record["fraction"]),
        int(record["fold"]),
        int(record["seed"]),
    )


def collect(out: Path) -> RunResults:
    """Read and check every cell of ``out``; add the expected cells that have no file.

    A cell file is used only when it is a cell record (``cell_problem``) of the grid position
    its path names, so a file copied into another cell's place is not counted twice; every file
    set aside is named in the notes and its cell counted as missing."""
    out = Path(out)
    records, notes = [], []
    for path in sorted((out / "cells").glob("*/*/*/*/*.json")):
        record = read_json(path)
        problem = "it is not readable JSON" if record is None else cell_problem(record, path)
        if problem:
            notes.append(f"rejected {path.relative_to(out)}: {problem}; counted as missing")
            continue
        record["path"] = str(path.relative_to(out))
        records.append(record)
    check_one_configuration(records, out)
    settings = _run_settings(out, notes)
    cells = cell_rows(records)
    if cells.empty:
        return RunResults(out, cells, {}, settings, notes)
    cells["fraction"] = cells["fraction"].astype(float)
    missing = _missing_cells(cells, records, settings)
    if missing:
        cells = pd.concat([cells, pd.DataFrame(missing)], ignore_index=True)
    cells = cells.sort_values(KEY).reset_index(drop=True)
    done = {cell_key(r): r for r in records if r.get("status") == "done"}
    return RunResults(out, cells, done, settings, notes)


def _run_settings(out: Path, notes: list[str]) -> dict[str, Any] | None:
    path = out / "run.yaml"
    if not path.exists():
        notes.append("no run.yaml: the expected grid is unknown, so missing cells are not shown")
        return None
    try:
        settings = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except (OmegaConfBaseException, yaml.YAMLError) as error:
        first = str(error).splitlines()[0]
        notes.append(f"run.yaml could not be read ({first}); missing cells are not shown")
        return None
    if not isinstance(settings, dict):
        notes.append("run.yaml holds no settings; missing cells are not shown")
        return None
    return settings


def _missing_cells(
    cells: pd.DataFrame, records: list[dict[str, Any]], settings: dict[str, Any] | None
) -> list[dict]:
    """Cells of the expected grid without a file; a method whose cells name the protocols it
    is evaluated by (``evaluated_by``, e.g. a baseline that is never fine-tuned) misses no
    cell of another protocol."""
    if settings is None:
        return []
    roles = {r["method"]: r.get("role") or "method" for r in records}
    evaluated_by = {r["method"]: r["evaluated_by"] for r in records if r.get("evaluated_by")}
    methods = list(dict.fromkeys([*settings.get("methods", []), *cells["method"]]))
    protocols = list(
        dict.fromkeys([*settings.get("finetune", {}).get("protocols", []), *cells["protocol"]])
    )
    splits = settings.get("splits", {})
    grid = product(
        methods,
        protocols,
        [float(f) for f in splits.get("fractions", [])],
        range(int(splits.get("folds", 0))),
        [int(s) for s in splits.get("seeds", [])],
    )
    present = set(map(tuple, cells[KEY].itertuples(index=False)))
    return [
        dict(zip(KEY, key), status="missing", role=roles.get(key[0], "method"))
        for key in grid
        if key not in present and key[1] in evaluated_by.get(key[0], protocols)
    ]


def check_one_configuration(records: list[dict[str, Any]], out: Path) -> None:
    """Refuse cells of several configurations, naming what differs (see the module docstring)."""
    problems = []
    checks: list[tuple[str, Callable[[dict], Any], Callable[[dict], Any]]] = [
        ("the profile", lambda r: "all", lambda r: r.get("profile")),
        ("the backbone", lambda r: "all", lambda r: r.get("backbone")),
        ("the cohort", lambda r: "all", lambda r: _config(r, "data", "cohort")),
        ("the test set of {}", _seed_and_fold, lambda r: _config(r, "data", "test")),
        ("the settings of protocol '{}'", lambda r: r["protocol"], _protocol_settings),
        ("the pretraining settings of '{}'", lambda r: r["method"], _pretraining_settings),
        ("the pretraining of {}", _pretraining_unit, lambda r: _config(r, "pretraining")),
    ]
    for what, group_of, value_of in checks:
        groups: dict[Any, dict[str, list[str]]] = {}
        for record in records:
            value = value_of(record)
            if value is None:
                continue
            text = json.dumps(value, sort_keys=True)
            groups.setdefault(group_of(record), {}).setdefault(text, []).append(record["path"])
        for group, values in groups.items():
            if len(values) > 1:
                problems.append(f"{what.format(group)} differs: {_describe(values)}")
    if problems:
        raise MixedConfigurationError(
            f"{out} holds cells of more than one configuration, which one table cannot "
            f"compare: {'; '.join(problems)}. Report one configuration per folder: move or "
            f"delete the cell files of the other one (`ssl3d run --out {out} --force` "
            "recomputes the cells of the current settings but leaves cells outside its grid)."
        )


def _config(record: dict, *keys: str) -> Any:
    value = record.get("config")
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _protocol_settings(record: dict) -> Any:
    config = record.get("config") or {}
    return config.get("protocol", config.get("finetune"))


def _pretraining_settings(record: dict) -> Any:
    """The method's settings (the same for every unit of the method; only the pretraining
    seed differs between units)."""
    pretraining = _config(record, "pretraining")
    if not isinstance(pretraining, dict):
        return None
    pretrain = {k: v for k, v in (pretraining.get("pretrain") or {}).items() if k != "seed"}
    return {
        "settings": pretraining.get("settings"),
        "pretrain": pretrain,
        "backbone": pretraining.get("backbone"),
    }


def _seed_and_fold(record: dict) -> str:
    """Test sets are compared per seed and fold: rotating test folds differ between folds
    (``benchmark.reporting.pooling`` checks that they are disjoint)."""
    return f"seed {record['seed']}, fold {record['fold']}"


def _pretraining_unit(record: dict) -> str:
    """The pretraining unit a cell starts from: the method and seed, and fold[, fraction] if
    fold- or fraction-scoped."""
    pretraining = _config(record, "pretraining") or {}
    if pretraining.get("fold") is None:
        return f"'{record['method']}' (seed {pretraining.get('seed')})"
    at = "" if pretraining.get("fraction") is None else f", fraction {pretraining['fraction']:g}"
    return f"'{record['method']}' (seed {pretraining.get('seed')}, fold {pretraining['fold']}{at})"


def _describe(values: dict[str, list[str]]) -> str:
    """The differing settings of the two largest groups, with counts and an example file."""
    (first, first_paths), (second, second_paths) = sorted(
        values.items(), key=lambda item: -len(item[1])
    )[:2]
    a, b = json.loads(first), json.loads(second)
    if isinstance(a, dict) and isinstance(b, dict):
        flat_a, flat_b = dict(setting_leaves(a)), dict(setting_leaves(b))
        keys = [k for k in dict.fromkeys([*flat_a, *flat_b]) if flat_a.get(k) != flat_b.get(k)]
        a = ", ".join(f"{k}={flat_a.get(k)!r}" for k in keys[:4])
        b = ", ".join(f"{k}={flat_b.get(k)!r}" for k in keys[:4])
    more = f" (and {len(values) - 2} more variants)" if len(values) > 2 else ""
    return (
        f"{a} in {len(first_paths)} cell(s), e.g. {first_paths[0]}, but {b} in "
        f"{len(second_paths)} cell(s), e.g. {second_paths[0]}{more}"
    )
