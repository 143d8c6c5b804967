"""`ssl3d data check`: the report of the run's own data checks, and a summary of the cohort.

The checks are `run_checks.check_run_data`, the function `ssl3d run` calls before it starts,
with the profile's preprocessing and split settings (`benchmark.rundata.check_data` supplies
them), so the check passes exactly the cohorts a run accepts. Every problem is reported, not
only the first; what a run would only log (excluded rows under `data.on_bad_rows=exclude`,
upsampled volumes) is listed as a note.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib

from .cohort import Cohort
from .manifest import CENTROID_COLUMNS, ManifestError
from .run_checks import DataCheck


@dataclass
class CheckReport:
    """`text`: a printable summary that ends with the problems; `problems`: one message each."""

    text: str
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def report_check(check: DataCheck) -> CheckReport:
    """The summary of a checked cohort, its notes and every problem that refuses a run."""
    problems = check.problems
    text = _summary(check.manifest, check.cohort, check.splits)
    if check.notes:
        text += "\nNotes:\n" + "\n".join(f"- {note}" for note in check.notes)
    return CheckReport(_with_problems(text, problems), problems)


def report_unreadable(path: str | Path, error: ManifestError) -> CheckReport:
    """The report of a manifest that cannot be read at all (`read_manifest` raised)."""
    problems = [str(problem) for problem in error.problems]
    return CheckReport(_with_problems(f"Manifest {path} cannot be read.", problems), problems)


def _summary(manifest: Path, cohort: Cohort, splits) -> str:
    table = cohort.table
    preprocessing = cohort.preprocessing
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
    split_line = "cannot be made (see the problems)"
    if splits is not None:
        test = splits.loc[splits["partition"] == "test", "subject_id"].nunique()
        split_line = (
            f"{test} test subjects, {splits['fold'].nunique()} fold(s) x "
            f"{splits['seed'].nunique()} seed(s), label fractions "
            + ", ".join(f"{f:g}" for f in sorted(splits["fraction"].dropna().unique()))
        )
    lines = [
        f"Manifest: {manifest}",
        f"Subjects: {subjects}",
        f"Volumes: {len(table)} usable, {len({p.row for p in cohort.excluded})} bad rows",
        "Labels: " + ", ".join(f"{count} {name}" for name, count in label_counts.items()),
        f"Pathologies: {_counts(findings)}",
        f"Sides: {_counts(Counter(side or 'none' for side in table['side']))}",
        f"Stored shapes ({len(headers)} image files): {_counts(shapes)}",
        f"Voxel spacings (mm): {_counts(spacings)}",
        f"Centroids: {len(with_centroid)} rows{_ranges(with_centroid)}",
        f"Masks: {masks}",
        f"Preprocessing: {settings}",
        f"Splits: {split_line}",
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
