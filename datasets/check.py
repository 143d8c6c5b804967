"""`ssl3d data check`: validate a manifest and every file it lists, and summarise the cohort.

The check goes through the real loading path (`read_manifest` with bad rows excluded, then
`load_cohort`), so it finds exactly what a benchmark run would trip over, and reports every
problem instead of stopping at the first. As a side effect the cohort cache is warm afterwards.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import pandas as pd

from .cohort import Cohort, load_cohort
from .manifest import CENTROID_COLUMNS, Manifest, ManifestError, Problem, read_manifest
from .volumes import Preprocessing


@dataclass
class CheckReport:
    """`text`: a printable summary that ends with the problems; `problems`: one message each."""

    text: str
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def check_manifest(
    path: str | Path,
    preprocessing: Preprocessing | None = None,
    cache_dir: str | Path | None = None,
    workers: int | None = None,
) -> CheckReport:
    """Check the manifest at `path` and all its files; summarise what loads.

    `preprocessing` (default: the paper's, docs/protocol.md) decides the crop that must fit inside
    each volume; `cache_dir` and `workers` are passed to `load_cohort`. Besides the problems
    of `read_manifest` and `load_volume`, a mask that disagrees with its label (a normal sinus
    whose mask marks voxels, an anomalous one whose mask marks none) is a problem too.
    """
    preprocessing = preprocessing or Preprocessing()
    try:
        manifest = read_manifest(path, on_bad_rows="exclude")
    except ManifestError as error:
        problems = [str(problem) for problem in error.problems]
        return CheckReport(_with_problems(f"Manifest {path} cannot be read.", problems), problems)
    cohort = load_cohort(manifest, preprocessing, cache_dir=cache_dir, workers=workers)
    problems = [
        str(problem) for problem in cohort.excluded + _mask_label_conflicts(cohort, manifest)
    ]
    text = _with_problems(_summary(manifest, cohort, preprocessing), problems)
    return CheckReport(text, problems)


def _mask_label_conflicts(cohort: Cohort, manifest: Manifest) -> list[Problem]:
    if cohort.masks is None:
        return []
    marked = cohort.masks.flatten(1).sum(1).tolist()
    problems = []
    for row, label, mask, voxels in zip(
        cohort.table["row"], cohort.table["label"], cohort.table["mask"], marked
    ):
        if not mask or pd.isna(label) or bool(voxels) == (label == 1):
            continue
        if label == 0:
            message = f"label 0 (normal) but its mask marks {voxels} voxels of the sample"
        else:
            message = "label 1 (anomalous) but its mask marks no voxel of the sample"
        problems.append(Problem(manifest.path, row, "mask", message, "Check the label and mask."))
    return problems


def _summary(manifest: Manifest, cohort: Cohort, preprocessing: Preprocessing) -> str:
    table = cohort.table
    labels = table["label"]
    label_counts = {"normal": (labels == 0).sum(), "anomalous": (labels == 1).sum()}
    label_counts["unlabelled"] = labels.isna().sum()
    findings = Counter(word for cell in table["pathology"] for word in cell.split(";") if word)
    headers = [nib.load(image).header for image in table["image"].unique()]
    shapes = Counter(tuple(int(n) for n in header.get_data_shape()) for header in headers)
    spacings = Counter(
        tuple(round(float(z), 3) for z in header.get_zooms()[:3]) for header in headers
    )
    with_centroid = table.dropna(subset=list(CENTROID_COLUMNS))
    masks = f"{(table['mask'] != '').sum()} rows"
    if cohort.masks is not None:
        masks += f", {cohort.masks.flatten(1).any(1).sum()} of them mark voxels"
    subjects = f"{table['subject_id'].nunique()} "
    subjects += f"({table.loc[labels.notna(), 'subject_id'].nunique()} with labels)"
    settings = (
        f"crop {preprocessing.crop}, size {preprocessing.size}, clip percentiles "
        f"{preprocessing.clip_percentiles}, mirror right sides: {preprocessing.mirror_right}"
    )
    lines = [
        f"Manifest: {manifest.path}",
        f"Subjects: {subjects}",
        f"Volumes: {len(table)} loaded, {len({p.row for p in cohort.excluded})} rows excluded",
        "Labels: " + ", ".join(f"{count} {name}" for name, count in label_counts.items()),
        f"Pathologies: {_counts(findings)}",
        f"Sides: {_counts(Counter(side or 'none' for side in table['side']))}",
        f"Stored shapes ({len(headers)} image files): {_counts(shapes)}",
        f"Voxel spacings (mm): {_counts(spacings)}",
        f"Centroids: {len(with_centroid)} rows{_ranges(with_centroid)}",
        f"Masks: {masks}",
        f"Preprocessing: {settings}",
    ]
    return "\n".join(lines)


def _counts(counter: Counter) -> str:
    """'key xcount, ...' sorted by key, or 'none'."""
    return ", ".join(f"{key} x{count}" for key, count in sorted(counter.items(), key=str)) or "none"


def _ranges(rows) -> str:
    if rows.empty:
        return ""
    spans = [f"{name[-1]} {rows[name].min():g}..{rows[name].max():g}" for name in CENTROID_COLUMNS]
    return " (stored voxels: " + ", ".join(spans) + ")"


def _with_problems(text: str, problems: list[str]) -> str:
    if not problems:
        return text + "\nNo problems found."
    return text + f"\n{len(problems)} problem(s):\n" + "\n".join(f"- {p}" for p in problems)
