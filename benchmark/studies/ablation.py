"""Ablation grids of a method with one command: ``ssl3d ablate METHOD --out DIR``.

``configs/ablations/<method>.yaml`` names the method and its grids; a grid maps settings to the
values to try, and each combination of values is a *variant*. Optional ``settings`` (dotted
key -> value) hold for every variant, after the profile and before the command line's
``key=value`` (SparK's grid fixes its 64^3 input there). Every variant is an ordinary run
of that one method with those settings, in its own folder, so variants never collide and a
killed ablation resumes like any run::

    OUT/data/phantom/              the built-in cohort, generated once for every variant
    OUT/variants/<values>/         one run folder per variant (run.yaml, pretrain/, cells/)
    OUT/stages/                    stage files shared between variants (hard links)
    OUT/tables/ablation_<method>.{csv,md}   validation and test AUPRC of every variant

A variant's folder is named by the values of every ablated setting, so variants of different
grids that resolve to the same settings (the headline setting usually appears in each grid) run
once. Stages are shared: before a variant runs, the stage files other variants built for the
same (seed, fold) are linked into its stage folder; a stage file is named by the hash of
everything it depends on, so a variant uses exactly those made with its own settings (the
residual method's autoencoder is trained once for all median-filter and loss variants).
"""

from __future__ import annotations

import itertools
import math
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from benchmark.config import ConfigError, _read_yaml, configs_root, load_config
from benchmark.evaluation.metrics import weighted_average_precision
from benchmark.files import write_atomic
from benchmark.orchestration.grid import run_grid
from benchmark.orchestration.lock import run_folder_lock
from benchmark.reporting.report import HEADLINE_PROTOCOL
from benchmark.results import cell_rows, read_cells, read_json
from benchmark.rundata import phantom_manifest
from benchmark.training.units import pretraining_units


@dataclass(frozen=True)
class Variant:
    """One combination of a grid's values."""

    grid: str
    settings: tuple[tuple[str, Any], ...]  # (dotted key, value) pairs

    @property
    def overrides(self) -> list[str]:
        return [f"{key}={value}" for key, value in self.settings]


def available_ablations() -> list[str]:
    """Methods with an ablation file in ``configs/ablations``."""
    folder = configs_root() / "ablations"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_ablation(method: str) -> DictConfig:
    """The ablation file of ``method``, checked."""
    if method not in available_ablations():
        raise ConfigError(
            f"no ablation file for '{method}' (configs/ablations/{method}.yaml); ablations "
            f"exist for: {', '.join(available_ablations()) or 'none'}"
        )
    path = configs_root() / "ablations" / f"{method}.yaml"
    spec = _read_yaml(path, f"configs/ablations/{method}.yaml")
    if spec.get("method") != method or not spec.get("grids"):
        raise ConfigError(f"{path}: needs `method: {method}` and at least one grid under `grids`")
    return spec


def ablation_variants(spec: DictConfig, grids: Sequence[str] | None = None) -> list[Variant]:
    """Every variant of the chosen grids (all grids when ``grids`` is None), in file order."""
    chosen = list(spec.grids) if grids is None else list(grids)
    unknown = [name for name in chosen if name not in spec.grids]
    if unknown:
        raise ConfigError(
            f"unknown ablation grid(s) {', '.join(unknown)} for {spec.method}; grids: "
            f"{', '.join(spec.grids)}"
        )
    variants = []
    for name in chosen:
        grid = OmegaConf.to_container(spec.grids[name], resolve=True)
        for values in itertools.product(*grid.values()):
            variants.append(Variant(name, tuple(zip(grid, values))))
    return variants


def ablation_settings(spec: DictConfig) -> list[str]:
    """The ``key=value`` overrides the ablation file sets for every variant."""
    if not spec.get("settings"):
        return []  # to_container refuses a plain {}
    settings = OmegaConf.to_container(spec.settings, resolve=True)
    return [f"{key}={value}" for key, value in settings.items()]


def run_ablation(
    method: str,
    out: Path,
    profile: str | None = None,
    overrides: Sequence[str] = (),
    grids: Sequence[str] | None = None,
    quiet: bool = False,
    log: Callable[[str], None] = print,
) -> pd.DataFrame:
    """Run every variant under ``out`` (resuming finished work); returns the ablation table."""
    out = Path(out)
    spec = load_ablation(method)
    variants = ablation_variants(spec, grids)
    axes = list(dict.fromkeys(key for variant in variants for key, _ in variant.settings))
    shared = [*ablation_settings(spec), *overrides]
    base = load_config(profile, shared, methods=[method])
    with run_folder_lock(out, f"ssl3d ablate {method}", log):  # one writer per folder
        return _run_variants(method, out, profile, shared, base, variants, axes, quiet, log)


def _run_variants(
    method: str,
    out: Path,
    profile: str | None,
    shared: Sequence[str],
    base: DictConfig,
    variants: list[Variant],
    axes: list[str],
    quiet: bool,
    log: Callable[[str], None],
) -> pd.DataFrame:
    """The variants of ``run_ablation``, under its lock (``shared``: settings of every one)."""
    shared = list(shared)
    if not base.data.manifest:
        out.mkdir(parents=True, exist_ok=True)
        shared.append(f"data.manifest={phantom_manifest(base, out, log).resolve()}")
    folders: dict[Variant, Path] = {}
    for number, variant in enumerate(variants, 1):
        cfg = load_config(profile, [*shared, *variant.overrides], methods=[method])
        folder = out / "variants" / _folder_name(cfg, axes)
        folders[variant] = folder
        if folder in list(folders.values())[:-1]:
            continue
        log(f"ablation {method} [{number}/{len(variants)}] {variant.grid}: {folder.name}")
        _link_stages(cfg, method, folder, out / "stages", into_run=True)
        run_grid(cfg, folder, quiet=quiet)
        _link_stages(cfg, method, folder, out / "stages", into_run=False)
    return ablation_table(method, variants, folders, out)


def _folder_name(cfg: DictConfig, axes: list[str]) -> str:
    return ",".join(f"{key.rsplit('.', 1)[-1]}={OmegaConf.select(cfg, key)}" for key in axes)


def _link_stages(cfg: DictConfig, method: str, run: Path, store: Path, into_run: bool) -> None:
    """Hard-link stage files between a variant's units and the shared store (copy if links
    are impossible); existing files are kept."""
    for unit in pretraining_units(cfg, method, run):
        own = unit.directory / "stages"
        common = store / unit.directory.relative_to(run / "pretrain" / method)
        source, target = (common, own) if into_run else (own, common)
        if not source.is_dir():
            continue
        target.mkdir(parents=True, exist_ok=True)
        for path in source.glob("*.pt"):
            if not (target / path.name).exists():
                try:
                    os.link(path, target / path.name)
                except OSError:
                    shutil.copy2(path, target / path.name)


def ablation_table(
    method: str, variants: list[Variant], folders: dict[Variant, Path], out: Path
) -> pd.DataFrame:
    """Write ``OUT/tables/ablation_<method>.{csv,md}``: per label fraction of every variant the
    validation AUPRC (the number to choose a setting by) and the test AUPRC, and the numbers
    its pretraining units noted (``notes`` of ``pretrain.json``, e.g. the residual method's
    localisation AUPRC), averaged over the units."""
    rows = []
    for variant in variants:
        records = read_cells(folders[variant])
        cells = cell_rows(records).assign(validation_auprc=[validation_auprc(r) for r in records])
        if cells.empty:
            continue
        protocols = list(cells["protocol"].unique())
        protocol = HEADLINE_PROTOCOL if HEADLINE_PROTOCOL in protocols else sorted(protocols)[0]
        summary = _summarize(cells[cells["protocol"] == protocol])
        notes = _pretraining_notes(folders[variant] / "pretrain" / method)
        for _, line in summary.iterrows():
            rows.append(
                {
                    "grid": variant.grid,
                    "protocol": protocol,
                    **{key.rsplit(".", 1)[-1]: value for key, value in variant.settings},
                    "fraction": line["fraction"],
                    "validation_auprc_mean": line["validation_mean"],
                    "validation_auprc_std": line["validation_std"],
                    "auprc_mean": line["mean"],
                    "auprc_std": line["std"],
                    "cells": line["n"],
                    "failed": line["failed"],
                    **notes,
                    "run": str(folders[variant].relative_to(out)),
                }
            )
    table = pd.DataFrame(rows)
    tables = out / "tables"
    tables.mkdir(parents=True, exist_ok=True)
    write_atomic(tables / f"ablation_{method}.csv", table.to_csv(index=False, float_format="%.6g"))
    write_atomic(tables / f"ablation_{method}.md", _markdown(method, table))
    return table


def validation_auprc(record: dict) -> float:
    """A cell's AUPRC on its validation volumes (``validation_predictions``); NaN without."""
    predictions = record.get("validation_predictions") or []
    if not predictions:
        return math.nan
    scores = torch.tensor([p["score"] for p in predictions], dtype=torch.float64)
    labels = torch.tensor([p["label"] for p in predictions], dtype=torch.float64)
    return float(weighted_average_precision(scores, labels)[0])


def _summarize(cells: pd.DataFrame) -> pd.DataFrame:
    """Per fraction: test and validation AUPRC mean and std, finished and failed cells."""
    if "auprc" not in cells:  # no cell finished, so no cell recorded metrics
        cells = cells.assign(auprc=math.nan)
    finished = cells[cells["status"] == "done"]
    summary = finished.groupby("fraction").agg(
        mean=("auprc", "mean"),
        std=("auprc", "std"),
        n=("auprc", "count"),
        validation_mean=("validation_auprc", "mean"),
        validation_std=("validation_auprc", "std"),
    )
    failed = cells[cells["status"] == "failed"].groupby("fraction").size().rename("failed")
    summary = summary.join(failed, how="outer").reset_index()
    summary["n"] = summary["n"].fillna(0).astype(int)
    summary["failed"] = summary["failed"].fillna(0).astype(int)
    return summary.sort_values("fraction")


def _pretraining_notes(folder: Path) -> dict[str, float]:
    """Numeric notes of every pretraining unit under ``folder``, averaged: ``key.field``."""
    found: dict[str, list[float]] = {}
    for path in sorted(folder.rglob("pretrain.json")):
        for key, fields in ((read_json(path) or {}).get("notes") or {}).items():
            for field, value in fields.items() if isinstance(fields, dict) else [("", fields)]:
                if isinstance(value, (int, float)):
                    found.setdefault(f"{key}.{field}".rstrip("."), []).append(float(value))
    return {key: sum(values) / len(values) for key, values in found.items()}


def _markdown(method: str, table: pd.DataFrame) -> str:
    if table.empty:
        return f"# Ablations of {method}\n\nNo finished cells yet.\n"
    lines = [f"# Ablations of {method}", ""]
    for grid, rows in table.groupby("grid", sort=False):
        keys = [c for c in rows.columns if _is_setting(c) and rows[c].notna().all()]
        checks = [c for c in rows.columns if c.endswith(".auprc") and rows[c].notna().any()]
        fractions = sorted(rows["fraction"].unique())
        validated = rows.dropna(subset=["validation_auprc_mean"])
        chosen = validated.loc[validated.groupby("fraction")["validation_auprc_mean"].idxmax()]
        chosen = {(line.fraction, line.run) for line in chosen.itertuples()}
        header = [*keys]
        for fraction in fractions:
            header += [f"validation AUPRC {fraction:g}", f"test AUPRC {fraction:g}"]
        header += checks
        lines += [f"## {grid}", "", "| " + " | ".join(header) + " |"]
        lines.append("|" + "---|" * len(header))
        for values, variant in rows.groupby(keys, sort=False):
            values = values if isinstance(values, tuple) else (values,)
            by_fraction = variant.set_index("fraction")
            cells = []
            for fraction in fractions:
                best = (fraction, variant["run"].iloc[0]) in chosen
                cells += [
                    _mean_std(by_fraction, fraction, "validation_auprc", bold=best),
                    _mean_std(by_fraction, fraction, "auprc"),
                ]
            cells += [_number(variant[check].iloc[0]) for check in checks]
            lines.append("| " + " | ".join([*map(str, values), *cells]) + " |")
        lines.append("")
    lines.append(
        f"AUPRC ({', '.join(table['protocol'].unique())} protocol): mean ± std over folds and "
        "seeds, on each cell's validation volumes and on the test set. Choose a setting by "
        "validation AUPRC (bold: the best variant of a grid per fraction); the test AUPRC is "
        "the estimate of the chosen setting, and choosing by it would make that estimate "
        "optimistic. Columns ending "
        "in .auprc are noted by pretraining (mean over units); residual_localisation.auprc is "
        "the voxel-level AUPRC of the residual targets against the anomaly masks of each "
        "fold's validation volumes."
    )
    return "\n".join(lines) + "\n"


_SUMMARY_COLUMNS = {
    "grid",
    "protocol",
    "fraction",
    "auprc_mean",
    "auprc_std",
    "validation_auprc_mean",
    "validation_auprc_std",
    "cells",
    "failed",
    "run",
}


def _is_setting(column: str) -> bool:
    return column not in _SUMMARY_COLUMNS and "." not in column


def _number(value) -> str:
    return "–" if pd.isna(value) else f"{value:.3f}"


def _mean_std(by_fraction: pd.DataFrame, fraction: float, name: str, bold: bool = False) -> str:
    """``mean ± std`` of ``<name>_mean`` and ``<name>_std`` at ``fraction`` (bold when asked)."""
    if fraction not in by_fraction.index or by_fraction.loc[fraction, "cells"] == 0:
        return "–"
    line = by_fraction.loc[fraction]
    if pd.isna(line[f"{name}_mean"]):
        return "–"
    std = 0.0 if pd.isna(line[f"{name}_std"]) else line[f"{name}_std"]
    text = f"{line[f'{name}_mean']:.3f} ± {std:.3f}"
    text = f"**{text}**" if bold else text
    return text + (f" ({int(line['failed'])} failed)" if line["failed"] else "")
