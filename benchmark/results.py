"""Result files: one JSON per finished unit, written atomically, read back by the report.

Files of a run folder are read as data only: ``load_plain`` never unpickles code,
``require_inside`` keeps a path that one file records about another inside its folder, and
``set_aside`` moves a file that cannot be used out of the way (docs/errors.md).

A cell file ``OUT/cells/<method>/<protocol>/f<fraction>/fold<k>/seed<s>.json`` holds
``method, protocol, fraction, fold, seed, status`` (``done`` or ``failed``), ``metrics``
(``auprc``, ``auroc``, ``f1``, ``precision``, ``recall``, ``specificity``), ``prevalence``,
``threshold``, ``predictions`` (``subject_id, side, label, pathology, score`` for every test
volume), ``validation_predictions``, ``config_hash``, ``config``, ``versions``, ``seconds``, for a
``finetune`` cell on a cohort with masks ``localisation``, for a ``finetune`` cell that set a
checkpoint aside ``set_aside``, and for a failed cell ``error``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from benchmark.errors import UserError
from benchmark.files import write_atomic


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
    write_atomic(path, json.dumps(_json_safe(data), indent=1, sort_keys=False))


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
        "scikit-learn",
        "scipy",
    ):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


@cache
def code_version() -> str:
    """The code that makes the numbers, for result fingerprints: ``ssl3d <version>`` plus, when
    the package runs from a git checkout, ``git <commit>`` and ``+dirty`` for uncommitted
    changes to tracked files; ``unknown`` parts where neither can be found. Asked once per
    process (git takes milliseconds; no git is no failure)."""
    try:
        version = metadata.version("ssl3d")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return f"ssl3d {version}, git {_git_state(Path(__file__).resolve().parent)}"


def _git_state(package: Path) -> str:
    """``<commit>[+dirty]`` of the checkout holding ``package``, or ``unknown``."""

    def git(*arguments: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(package), *arguments],
            capture_output=True, text=True, timeout=10, check=True,
        )  # fmt: skip
        return done.stdout.strip()

    try:
        top = Path(git("rev-parse", "--show-toplevel")).resolve()
        if not package.is_relative_to(top):
            return "unknown"
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


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
        row["role"] = record.get("role") or "method"
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


# ---- files of a run folder, loaded as data only ------------------------------------------------
#
# A run folder may come from someone else, so nothing in it is unpickled in full: a pickle can
# name any Python callable and have it called while loading. Every torch file is loaded with
# ``weights_only=True`` (tensors, numbers, strings, lists, tuples, dicts, sets), and every path
# that one file records about another must lie inside the folder it belongs to.


class UnloadableFileError(UserError):
    """A file of a run folder that does not load as plain tensors and containers: corrupt,
    written by another program or version, or altered to run code when unpickled.

    ``path`` names the file and ``reason`` says why in one clause; the message adds ``fix``."""

    def __init__(self, path: Path, reason: str, fix: str):
        super().__init__(f"{path}: {reason}. {fix}")
        self.path, self.reason = Path(path), reason


def require_inside(path: str | Path, folder: Path, fix: str, source: Path | None = None) -> Path:
    """``path`` (resolved: symbolic links and ``..`` followed) when it lies inside ``folder``;
    a ``UserError`` naming it (and ``source``, the file that recorded it) otherwise."""
    resolved, root = Path(path).resolve(), Path(folder).resolve()
    if resolved != root and resolved.is_relative_to(root):
        return resolved
    recorded = f" (recorded in {source})" if source is not None else ""
    raise UserError(
        f"{path}{recorded} lies outside {folder}; ssl3d reads no file of a training from "
        f"outside its own folder (the folder was moved, or a file in it was altered). {fix}"
    )


def unloadable_reason(error: BaseException) -> str:
    """Why ``torch.load(..., weights_only=True)`` refused a file, in one short clause."""
    text = str(error)
    marker = "WeightsUnpickler error:"
    if marker in text:
        detail = text.split(marker, 1)[1].strip().split("\n\n")[0].split(". Please")[0]
        return (
            f"it holds more than tensors and plain containers ({detail.strip()}); ssl3d does "
            "not unpickle such a file in full, which could run code"
        )
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return f"it is not a readable torch file ({type(error).__name__}: {first.split('. ')[0]})"


def load_plain(path: Path, fix: str) -> Any:
    """``torch.load(path, weights_only=True)`` onto the CPU; an ``UnloadableFileError`` that
    names the file, says why and what to do (``fix``) when it is not plain data."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torn, foreign or doctored files raise anything
        raise UnloadableFileError(path, unloadable_reason(error), fix) from error


# ---- files of a run folder that cannot be used, moved aside ------------------------------------
#
# A checkpoint or encoder that does not load (torn by a full disk or a copy, foreign, altered) is
# an accident to recover from: it is moved into the ``set-aside/`` folder of the pretraining unit
# or evaluation cell it belongs to, never deleted and never read again, and the work it held is
# done again. What is hostile rather than torn (a path outside the folder) stops the run instead.

SET_ASIDE = "set-aside"


def set_aside(path: Path, folder: Path, reason: str) -> dict[str, str]:
    """Move ``path``, a file of ``folder`` (a unit's or a cell's) that cannot be used, to
    ``folder/set-aside/`` under its path relative to ``folder`` (``.2``, ``.3``, ... added when
    that name is taken). Returns the entry a record keeps of it: ``file`` and ``moved_to``
    (relative to ``folder``) and ``reason``."""
    relative = Path(path).relative_to(folder)
    target, number = folder / SET_ASIDE / relative, 1
    while target.exists() or target.is_symlink():
        number += 1
        target = folder / SET_ASIDE / relative.with_name(f"{relative.name}.{number}")
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, target)
    return {
        "file": relative.as_posix(),
        "moved_to": target.relative_to(folder).as_posix(),
        "reason": reason,
    }


def describe_set_aside(entry: dict[str, str], folder: Path) -> str:
    """One clause for the run log that names the file set aside, where it went and why."""
    return (
        f"cannot use {folder / entry['file']}: {entry['reason']}; moved it to "
        f"{folder / entry['moved_to']}"
    )


def recorded_set_aside(record: dict[str, Any] | None) -> list[dict[str, str]]:
    """The ``set_aside`` entries a record (``pretrain.json``) already holds."""
    entries = (record or {}).get("set_aside")
    return (
        [entry for entry in entries if isinstance(entry, dict)] if isinstance(entries, list) else []
    )
