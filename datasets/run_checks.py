"""The checks a run makes on its cohort and splits; `ssl3d run` and `ssl3d data check` share them.

`check_run_data` reads the manifest, loads every row, makes the splits and collects every
problem instead of stopping at the first, so `ssl3d data check` can list them all and `ssl3d run`
refuses exactly when the check reports a problem (`DataCheck.refuse`). What is checked:

- Bad rows (refused, or left out with `data.on_bad_rows=exclude`): every problem of
  `read_manifest` and of loading a volume; a normal row whose mask marks voxels (a mask says
  where an anomaly is); a volume under a quarter of the crop on some axis (unless
  `data.allow_small_volumes`), since resizing it to `data.size` invents most of its voxels;
  subject IDs that differ only in case (`P0002`, `p0002`), which would be two subjects to the
  splits and most likely are one, so the subject-grouped split could put one patient on both
  sides.
- Both labels in the test set and in every seed's and fold's training and validation
  partitions (and in each label fraction's training subset), whether the splits are made or
  read from a file: a metric on one class is undefined and a classifier trained on one learns
  nothing.
- Leaks (always refused, `LeakError`): a test subject in the pretraining pool by ID
  (`splits.check_pretraining_pool`), and by content: a test volume whose voxel data equals a
  volume of a non-test subject. Content is compared through the SHA-256 digests of
  `volumes.Sample`, taken from the loaded voxels before clipping and resizing, so a copy is found
  whatever its file name, format, data type, side or the profile's preprocessing.

Said but not refused: volumes smaller than the crop on some axis (they are upsampled to
`data.size`), anomalous rows whose mask marks no voxel (they are left out of localisation).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from benchmark.errors import UserError

from .cohort import Cohort, load_cohort
from .manifest import ManifestError, Problem, read_manifest
from .splits import LeakError, SplitError, check_pretraining_pool
from .volumes import Preprocessing

# Listing more than this many rows in one note or problem only hides the rest of the report.
SHOWN_ROWS = 20


@dataclass
class DataCheck:
    """What `check_run_data` found.

    `cohort`: the loaded cohort less the bad rows (None when the manifest cannot be read);
    `splits`: the split table (None when it cannot be made); `bad_rows`: row problems;
    `split_problems`, `leaks`: messages; `notes`: what a run logs without refusing;
    `on_bad_rows`: whether bad rows refuse (`error`) or are left out (`exclude`).
    """

    manifest: Path
    on_bad_rows: str
    cohort: Cohort | None = None
    splits: pd.DataFrame | None = None
    bad_rows: list[Problem] = field(default_factory=list)
    split_problems: list[str] = field(default_factory=list)
    leaks: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        """Every reason the run refuses, one message each (empty: the run may start)."""
        refusing_rows = self.bad_rows if self.on_bad_rows == "error" else []
        return [str(problem) for problem in refusing_rows] + self.split_problems + self.leaks

    def refuse(self) -> None:
        """Raise what a run raises when the check found problems: a `LeakError` when test data
        leaked, else a `SplitError` for split problems, else a `ManifestError` of the bad rows;
        each message lists every problem."""
        problems = self.problems
        if not problems:
            return
        listing = f"{len(problems)} problem(s) with the data of {self.manifest}:\n" + "\n".join(
            f"- {problem}" for problem in problems
        )
        if self.leaks:
            raise LeakError(listing)
        if self.split_problems:
            raise SplitError(listing)
        raise ManifestError(self.bad_rows)


def check_run_data(
    manifest: str | Path,
    preprocessing: Preprocessing,
    make_splits: Callable[[Cohort], pd.DataFrame],
    *,
    on_bad_rows: str = "error",
    allow_small_volumes: bool = False,
    cache_dir: str | Path | None = None,
    workers: int | None = None,
) -> DataCheck:
    """Load `manifest` as a run does and check it (module docstring); collect every problem.

    `make_splits(cohort)` gives the run's split table (made from its settings or read from its
    split file); a `UserError` it raises is one split problem. A manifest that cannot be read
    at all (missing, no header, required columns missing) raises its `ManifestError`.
    """
    read = read_manifest(manifest, on_bad_rows="exclude")
    check = DataCheck(read.path, on_bad_rows)
    cohort = load_cohort(read, preprocessing, cache_dir=cache_dir, workers=workers)
    found = (
        mask_problems(cohort, read.path)
        + small_volume_problems(cohort, read.path, allow_small_volumes)
        + case_problems(cohort, read.path)
    )
    check.cohort = cohort.without_rows(found)
    check.bad_rows = check.cohort.excluded
    if on_bad_rows == "exclude":
        check.notes += [f"excluded: {problem}" for problem in check.bad_rows]
    check.notes += upsampled_notes(check.cohort) + unmarked_mask_notes(check.cohort)
    try:
        check.splits = make_splits(check.cohort)
    except UserError as error:
        check.split_problems.append(str(error))
        return check
    check.split_problems += class_balance_problems(check.cohort, check.splits)
    check.leaks += leaks_by_id(check.cohort, check.splits)
    check.leaks += leaks_by_content(check.cohort, check.splits, read.path)
    return check


def mask_problems(cohort: Cohort, manifest: Path) -> list[Problem]:
    """A normal row whose mask marks voxels of its sample."""
    if cohort.masks is None:
        return []
    marked = cohort.masks.flatten(1).sum(1).tolist()
    table = cohort.table
    return [
        Problem(
            manifest,
            row,
            "mask",
            f"label 0 (normal) but its mask marks {voxels} voxels of the sample",
            "A mask marks an anomaly: correct the label or remove the mask.",
        )
        for row, label, voxels in zip(table["row"], table["label"], marked)
        if label is not pd.NA and label == 0 and voxels
    ]


def small_volume_problems(cohort: Cohort, manifest: Path, allow: bool) -> list[Problem]:
    """Samples under a quarter of the crop on some axis, unless `allow`."""
    if allow:
        return []
    crop = cohort.preprocessing.crop
    return [
        Problem(
            manifest,
            row,
            "image",
            f"the sample is {_shape(extent)} voxels, under a quarter of the {crop}-voxel crop on "
            f"some axis; resizing it to {cohort.preprocessing.size}^3 would invent most voxels",
            "Check the file, or set data.allow_small_volumes=true to use it anyway.",
        )
        for row, extent in zip(cohort.table["row"], cohort.sources["extent"])
        if min(extent) * 4 < crop
    ]


def case_problems(cohort: Cohort, manifest: Path) -> list[Problem]:
    """Rows whose subject ID equals another row's up to upper/lower case."""
    table = cohort.table
    folded = table["subject_id"].str.casefold()
    problems = []
    for _, group in table.groupby(folded, sort=False):
        if group["subject_id"].nunique() < 2:
            continue
        for row, subject in zip(group["row"], group["subject_id"]):
            others = group[group["subject_id"] != subject]
            named = ", ".join(
                f"{s!r} on line {r}" for r, s in zip(others["row"], others["subject_id"])
            )
            problems.append(
                Problem(
                    manifest,
                    row,
                    "subject_id",
                    f"subject {subject!r} differs only in case from {named}",
                    "Spell one subject's ID the same on every row (IDs are case-sensitive).",
                )
            )
    return problems


def upsampled_notes(cohort: Cohort) -> list[str]:
    """One line listing the samples smaller than the crop on some axis (upsampled)."""
    crop, size = cohort.preprocessing.crop, cohort.preprocessing.size
    small = [
        f"line {row} ({_shape(extent)})"
        for row, extent in zip(cohort.table["row"], cohort.sources["extent"])
        if min(extent) < crop
    ]
    if not small:
        return []
    return [
        f"{len(small)} volume(s) are smaller than the {crop}-voxel crop on some axis and are "
        f"resized to {size}^3 from those fewer voxels (upsampled): {_first(small)}"
    ]


def unmarked_mask_notes(cohort: Cohort) -> list[str]:
    """One line listing anomalous rows whose mask marks no voxel (left out of localisation)."""
    if cohort.masks is None:
        return []
    marked = cohort.masks.flatten(1).any(1).tolist()
    table = cohort.table
    unmarked = [
        f"line {row}"
        for row, label, mask, any_voxel in zip(table["row"], table["label"], table["mask"], marked)
        if mask and label is not pd.NA and label == 1 and not any_voxel
    ]
    if not unmarked:
        return []
    return [
        f"{len(unmarked)} anomalous row(s) have a mask that marks no voxel of the sample and are "
        f"left out of the localisation scores: {_first(unmarked)}"
    ]


def class_balance_problems(cohort: Cohort, splits: pd.DataFrame) -> list[str]:
    """Partitions (named by seed, fold and partition) that lack either label."""
    labels = cohort.table[cohort.table["label"].notna()].groupby("subject_id")["label"]
    normal, anomalous = labels.apply(lambda x: int((x == 0).sum())), labels.sum().astype(int)
    problems = []
    test = sorted(set(splits.loc[splits["partition"] == "test", "subject_id"]))
    if test:
        problems += _lacking(test, normal, anomalous, "the test set", "Use a larger test share.")
    fractions = sorted(splits["fraction"].dropna().unique())
    for (seed, fold), chosen in splits.groupby(["seed", "fold"]):
        where = f"seed {seed}, fold {fold}"
        val = chosen.loc[chosen["partition"] == "val", "subject_id"].tolist()
        problems += _lacking(val, normal, anomalous, f"{where}, validation", "Use fewer folds.")
        train = chosen[chosen["partition"] == "train"]
        for fraction in fractions:
            subjects = train.loc[train["fraction"] <= fraction + 1e-9, "subject_id"].tolist()
            problems += _lacking(
                subjects,
                normal,
                anomalous,
                f"{where}, training (label fraction {fraction:g})",
                "Use a larger smallest label fraction or more labelled subjects.",
            )
    return problems


def _lacking(subjects, normal: pd.Series, anomalous: pd.Series, what: str, fix: str) -> list[str]:
    normal_count = int(normal.reindex(subjects, fill_value=0).sum())
    anomalous_count = int(anomalous.reindex(subjects, fill_value=0).sum())
    if normal_count and anomalous_count:
        return []
    return [
        f"{what} has {len(subjects)} subjects with {normal_count} normal and {anomalous_count} "
        f"anomalous volumes; both labels are needed. {fix}"
    ]


def leaks_by_id(cohort: Cohort, splits: pd.DataFrame) -> list[str]:
    """A test subject among the unlabelled rows (every pretraining pool holds them)."""
    unlabelled = cohort.table.loc[cohort.table["label"].isna(), "subject_id"].unique()
    try:
        check_pretraining_pool(splits, unlabelled)
    except LeakError as error:
        return [str(error)]
    return []


def leaks_by_content(cohort: Cohort, splits: pd.DataFrame, manifest: Path) -> list[str]:
    """Test volumes whose voxel data equals a volume of a non-test subject (either digest)."""
    table = cohort.table
    test = table["subject_id"].isin(set(splits.loc[splits["partition"] == "test", "subject_id"]))
    first_of: dict[str, int] = {}
    for position in (~test).to_numpy().nonzero()[0]:
        for column in ("image_sha256", "sample_sha256"):
            first_of.setdefault(cohort.sources.at[position, column], position)
    leaks = []
    for position in test.to_numpy().nonzero()[0]:
        digests = [cohort.sources.at[position, c] for c in ("image_sha256", "sample_sha256")]
        copies = [first_of[d] for d in digests if d in first_of]
        if not copies:
            continue
        other = table.iloc[copies[0]]
        role = "an unlabelled (pretraining) row" if pd.isna(other["label"]) else "a labelled row"
        leaks.append(
            f"{manifest}, line {table.at[position, 'row']} (test subject "
            f"{table.at[position, 'subject_id']!r}) has the same voxel data as line "
            f"{other['row']} (subject {other['subject_id']!r}, {role} outside the test set). "
            "Remove the copy from the manifest."
        )
    return leaks


def _shape(extent) -> str:
    return "x".join(str(n) for n in extent)


def _first(items: list[str]) -> str:
    more = len(items) - SHOWN_ROWS
    return ", ".join(items[:SHOWN_ROWS]) + (f" and {more} more" if more > 0 else "")
