"""Result files: one JSON per finished unit, written atomically, read back by the report.

A cell file ``OUT/cells/<method>/<protocol>/f<fraction>/fold<k>/seed<s>.json`` holds
``method, protocol, fraction, fold, seed, status`` (``done`` or ``failed``), ``metrics``
(``auprc``, ``auroc``, ``f1``, ``precision``, ``recall``, ``specificity``), ``prevalence``,
``threshold``, ``predictions`` (``subject_id, side, label, pathology, score`` for every test
volume), ``validation_predictions``, ``config_hash``, ``config``, ``versions``, ``seconds``, for a
``finetune`` cell on a cohort with masks ``localisation``, and for a failed cell ``error``.
"""

from __future__ import annotations

import json
import math
import os
import platform
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd


@dataclass(frozen=True, order=True)
class Cell:
    """One evaluation: a method's encoder, a protocol, a label fraction, a fold, a seed."""

    method: str
    protocol: str
    fraction: float
    fold: int
    seed: int

    def path(self, out: Path) -> Path:
        return (
            Path(out)
            / "cells"
            / self.method
            / self.protocol
            / f"f{self.fraction:g}"
            / f"fold{self.fold}"
            / f"seed{self.seed}.json"
        )

    @property
    def title(self) -> str:
        return (
            f"{self.method} {self.protocol} fraction {self.fraction:g} fold {self.fold} "
            f"seed {self.seed}"
        )


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write JSON to a temporary file in the same folder, then rename it over ``path``.

    A reader (or a killed writer) never sees half a file. NaN is written as null.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(_json_safe(data), indent=1, sort_keys=False))
    os.replace(temporary, path)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON at ``path``, or None when it does not exist or is not valid JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def versions() -> dict[str, str]:
    """Versions of Python, ssl3d and the libraries that decide numbers."""
    found = {"python": platform.python_version()}
    for package in (
        "ssl3d",
        "torch",
        "monai",
        "lightly",
        "pytorch-lightning",
        "torchmetrics",
        "numpy",
    ):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def read_cells(out: Path) -> list[dict[str, Any]]:
    """Every cell file under ``OUT/cells`` (finished and failed), in path order."""
    records = []
    for path in sorted((Path(out) / "cells").glob("*/*/*/*/*.json")):
        record = read_json(path)
        if record is not None:
            record["path"] = str(path)
            records.append(record)
    return records


def cells_table(out: Path) -> pd.DataFrame:
    """One row per cell file: the key columns, status, and each metric as a column."""
    return cell_rows(read_cells(out))


def cell_rows(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per cell record: the key columns, status, each metric, provenance."""
    rows = []
    for record in records:
        row = {
            key: record.get(key)
            for key in ("method", "protocol", "fraction", "fold", "seed", "status")
        }
        row.update(record.get("metrics") or {})
        row["prevalence"] = record.get("prevalence")
        row["threshold"] = record.get("threshold")
        row["backbone"] = record.get("backbone")
        row["profile"] = record.get("profile")
        row["config_hash"] = record.get("config_hash")
        row["error"] = record.get("error")
        row["path"] = record.get("path")
        rows.append(row)
    return pd.DataFrame(rows)
