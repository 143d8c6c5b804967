"""Importers: a cohort in a format researchers already have, written as an ssl3d manifest.

Three sources, each with the label source named by the user (docs/contracts.md, "Importers"):
- `import_bids`: a BIDS dataset, one `sub-*/[ses-*/]anat/*.nii[.gz]` volume per subject, labels
  from a column of `participants.tsv` mapped to 0/1 by an explicit positive value;
- `import_medmnist`: a MedMNIST-3D `.npz` archive (Yang et al., "MedMNIST v2", Scientific Data
  2023), written as NIfTI files, with its official train/val/test split kept as a split file;
- `import_folder`: a folder of NIfTI files plus a labels CSV.

Every volume is a whole-volume sample: the manifest has no centroid, so a run resizes each file
to `data.size` (docs/contracts.md, "Volumes"). NIfTI sources are not copied: the manifest names
them relative to itself. Each importer writes `manifest.csv` (validated with `read_manifest`)
and `import.log` (what was read, left out and binarised) into an empty output folder.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from benchmark.datasets.manifest import NIFTI_SUFFIXES, read_manifest
from benchmark.datasets.splits import PAPER_FRACTIONS, given_splits, write_splits

from benchmark.errors import UserError
from benchmark.files import write_atomic

MANIFEST_NAME = "manifest.csv"
SPLITS_NAME = "splits.csv"
LOG_NAME = "import.log"
MISSING_VALUES = {"", "n/a", "na", "nan"}  # BIDS writes n/a for a missing value
MEDMNIST_SPLITS = ("train", "val", "test")
MEDMNIST_SIDES = (28, 64)


class CohortImportError(UserError, ValueError):
    """A source that cannot be imported as asked; the message says what to do."""


@dataclass
class ImportResult:
    """What an importer wrote: the manifest, the split file (MedMNIST) and the log lines."""

    manifest: Path
    splits: Path | None = None
    notes: list[str] = field(default_factory=list)


def prepare_output(out: str | Path, force: bool) -> Path:
    """The output folder, created; a folder with files in it is refused unless `force`."""
    out = Path(out).absolute()
    if out.is_file():
        raise CohortImportError(f"--out {out} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise CohortImportError(
            f"--out {out} is not empty (first: {next(out.iterdir()).name}); give an empty "
            "folder, or --force to write over the cohort already there (its manifest, split "
            "file and images)"
        )
    out.mkdir(parents=True, exist_ok=True)
    return out


def import_bids(
    source: str | Path,
    out: str | Path,
    label_column: str,
    positive: str,
    suffix: str | None = None,
    force: bool = False,
) -> ImportResult:
    """A manifest of a BIDS dataset: one anatomical volume per subject, labelled 1 where
    `participants.tsv`'s `label_column` equals `positive` and 0 otherwise (empty or `n/a`:
    unlabelled). `suffix` (e.g. `T1w`) keeps the files whose name ends in `_<suffix>`."""
    source = Path(source).absolute()
    participants_path = source / "participants.tsv"
    if not participants_path.is_file():
        raise CohortImportError(f"{source}: no participants.tsv; is this a BIDS dataset?")
    participants = pd.read_csv(participants_path, sep="\t", dtype=str, keep_default_na=False)
    for column in ("participant_id", label_column):
        if column not in participants.columns:
            raise CohortImportError(
                f"{participants_path} has no column {column!r} (columns: "
                f"{', '.join(participants.columns)}); name the label column with --label-column"
            )
    labels = dict(zip(participants["participant_id"].str.strip(), participants[label_column]))
    images = _bids_images(source, suffix)
    if not images:
        wanted = f"*_{suffix}.nii[.gz]" if suffix else "*.nii[.gz]"
        raise CohortImportError(f"{source}: no sub-*/[ses-*/]anat/{wanted} files")
    out = prepare_output(out, force)
    mapped, notes = _binarise(labels, positive, f"participants.tsv column {label_column!r}")
    rows = [
        {
            "subject_id": subject,
            "image": _relative(image, out),
            "label": mapped.get(subject, ""),
            "source_label": labels.get(subject, ""),
        }
        for subject, image in sorted(images.items())
    ]
    without_row = sorted(set(images) - set(labels))
    without_image = sorted(set(labels) - set(images))
    if without_row:
        notes.append(f"{len(without_row)} subject(s) not in participants.tsv, kept unlabelled")
    if without_image:
        notes.append(
            f"{len(without_image)} participant(s) without a matching image, left out "
            f"(first: {', '.join(without_image[:3])})"
        )
    return _finish(out, rows, [f"BIDS dataset {source}", *notes])


def _bids_images(source: Path, suffix: str | None) -> dict[str, Path]:
    """The one anatomical image of every subject; several per subject are refused."""
    found: dict[str, list[Path]] = {}
    for pattern in ("sub-*/anat/*", "sub-*/ses-*/anat/*"):
        for path in sorted(source.glob(pattern)):
            stem = _nifti_stem(path)
            if stem is not None and (suffix is None or stem.endswith(f"_{suffix}")):
                subject = path.relative_to(source).parts[0]
                found.setdefault(subject, []).append(path)
    several = {subject: paths for subject, paths in found.items() if len(paths) > 1}
    if several:
        subject, paths = next(iter(sorted(several.items())))
        names = ", ".join(path.name for path in paths)
        hint = "" if suffix else " Pass --suffix (e.g. --suffix T1w) to keep one modality."
        raise CohortImportError(
            f"{len(several)} subject(s) have several anatomical images (e.g. {subject}: "
            f"{names}); ssl3d takes one volume per subject.{hint} For several sessions or "
            "runs, copy the chosen files into one folder and use `ssl3d data import folder`."
        )
    return {subject: paths[0] for subject, paths in found.items()}


def import_folder(
    source: str | Path,
    out: str | Path,
    labels_csv: str | Path,
    file_column: str = "file",
    label_column: str = "label",
    positive: str | None = None,
    force: bool = False,
) -> ImportResult:
    """A manifest of a folder of NIfTI files labelled by a CSV (file name, label columns).

    Without `positive` the labels must be manifest labels (0/1, normal/anomalous); with it a
    label equal to `positive` is 1 and any other 0. Files the CSV does not list are kept
    unlabelled; a CSV row whose file is missing is refused. The subject id is the file name
    without its NIfTI suffix.
    """
    source, labels_csv = Path(source).absolute(), Path(labels_csv).absolute()
    if not source.is_dir():
        raise CohortImportError(f"{source}: no such folder of NIfTI files")
    try:
        table = pd.read_csv(labels_csv, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError) as error:
        raise CohortImportError(f"--labels {labels_csv}: cannot be read as CSV ({error})") from None
    for column, option in ((file_column, "--file-column"), (label_column, "--label-column")):
        if column not in table.columns:
            raise CohortImportError(
                f"{labels_csv} has no column {column!r} (columns: {', '.join(table.columns)}); "
                f"name it with {option}"
            )
    files = {path.name: path for path in sorted(source.iterdir()) if _nifti_stem(path)}
    labels = dict(zip(table[file_column].str.strip(), table[label_column].str.strip()))
    missing = sorted(set(labels) - set(files))
    if missing:
        raise CohortImportError(
            f"{labels_csv} lists {len(missing)} file(s) that are not NIfTI files in {source} "
            f"(first: {', '.join(missing[:3])}); fix the names or remove those rows"
        )
    if positive is None:
        mapped, notes = labels, []
    else:
        mapped, notes = _binarise(labels, positive, f"{labels_csv.name} column {label_column!r}")
    out = prepare_output(out, force)
    rows = [
        {
            "subject_id": _nifti_stem(path),
            "image": _relative(path, out),
            "label": "" if mapped.get(name, "").lower() in MISSING_VALUES else mapped[name],
            "source_label": labels.get(name, ""),
        }
        for name, path in files.items()
    ]
    unlisted = len(set(files) - set(labels))
    if unlisted:
        notes.append(f"{unlisted} file(s) not in {labels_csv.name}, kept unlabelled")
    return _finish(out, rows, [f"folder {source}, labels {labels_csv}", *notes])


def import_medmnist(
    source: str | Path,
    out: str | Path,
    positive_class: int | None = None,
    seeds: tuple[int, ...] = (0, 1, 2),
    fractions: tuple[float, ...] = PAPER_FRACTIONS,
    force: bool = False,
) -> ImportResult:
    """NIfTI files, a manifest and a split file of a MedMNIST-3D archive.

    The archive holds `{train,val,test}_images` (uint8 `[N, 28, 28, 28]` or `[N, 64, 64, 64]`)
    and `{train,val,test}_labels` (`[N]` or `[N, 1]` class indices). A binary archive keeps its
    labels; a multi-class one is binarised only with `positive_class` (that class vs the rest).
    The split file keeps the official split: one fold (fold 0) per seed whose test set is the
    official test set and whose validation set is the official val set; the seeds draw the
    nested label fractions of the official training set.
    """
    source = Path(source).absolute()
    try:
        archive = np.load(source, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise CohortImportError(f"{source}: not a readable .npz archive ({error})") from None
    with archive:
        parts = {name: _medmnist_part(archive, name, source) for name in MEDMNIST_SPLITS}
    classes = sorted({int(c) for _, labels in parts.values() for c in labels})
    if positive_class is None and not set(classes) <= {0, 1}:
        raise CohortImportError(
            f"{source} has {len(classes)} classes ({', '.join(map(str, classes))}); ssl3d "
            "evaluates a binary task: choose the anomalous class with --positive-class K "
            "(class K is 1, every other class 0)"
        )
    if positive_class is not None and positive_class not in classes:
        raise CohortImportError(
            f"--positive-class {positive_class} is not a class of {source} "
            f"(classes: {', '.join(map(str, classes))})"
        )
    out = prepare_output(out, force)
    rows, partition_of = [], {}
    for split, (images, labels) in parts.items():
        for index, (image, label) in enumerate(zip(images, labels)):
            subject = f"{split}-{index:05d}"
            path = out / "images" / f"{subject}.nii.gz"
            path.parent.mkdir(exist_ok=True)
            nib.save(nib.Nifti1Image(np.ascontiguousarray(image), np.eye(4)), path)
            binary = int(label) if positive_class is None else int(label == positive_class)
            rows.append(
                {
                    "subject_id": subject,
                    "image": _relative(path, out),
                    "label": str(binary),
                    "source_label": str(int(label)),
                    "official_split": split,
                }
            )
            partition_of[subject] = split
    notes = [f"MedMNIST-3D archive {source}: classes {', '.join(map(str, classes))}"]
    if positive_class is not None:
        notes.append(
            f"binarised one vs rest: class {positive_class} is label 1, classes "
            f"{', '.join(str(c) for c in classes if c != positive_class)} are label 0 "
            "(source_label keeps the class)"
        )
    result = _finish(out, rows, notes)
    table = read_manifest(result.manifest).table
    splits = given_splits(table, partition_of, tuple(seeds), tuple(fractions))
    result.splits = out / SPLITS_NAME
    write_splits(splits, result.splits)
    counts = {split: len(parts[split][1]) for split in MEDMNIST_SPLITS}
    used_fractions = sorted(set(fractions) | {1.0})
    result.notes.append(
        f"split file {result.splits}: the official split as one fold per seed (fold 0): test = "
        f"official test ({counts['test']} subjects, fixed), validation = official val "
        f"({counts['val']}), training = official train ({counts['train']}); seeds "
        f"{list(seeds)} draw nested label fractions {used_fractions} of the training set"
    )
    result.notes.append(
        f"run it with: ssl3d run --data {result.manifest} data.splits={result.splits} "
        f"splits.folds=1 splits.seeds=[{','.join(map(str, seeds))}] "
        f"splits.fractions=[{','.join(f'{f:g}' for f in used_fractions)}]"
    )
    _write_log(out, result.notes)
    return result


def _medmnist_part(archive, split: str, source: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images [N, S, S, S] uint8, labels [N]) of one official split, checked."""
    names = (f"{split}_images", f"{split}_labels")
    missing = [name for name in names if name not in archive.files]
    if missing:
        raise CohortImportError(
            f"{source} has no {', '.join(missing)} (keys: {', '.join(archive.files)}); a "
            "MedMNIST-3D archive has train_/val_/test_images and _labels"
        )
    images, labels = archive[names[0]], archive[names[1]]
    if (
        images.ndim != 4
        or images.shape[1] not in MEDMNIST_SIDES
        or len(set(images.shape[1:])) != 1
        or images.dtype != np.uint8
    ):
        raise CohortImportError(
            f"{source}: {names[0]} is {images.dtype} {list(images.shape)}, not uint8 "
            "[N, 28, 28, 28] or [N, 64, 64, 64] (is it a 2D MedMNIST archive?)"
        )
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or len(labels) != len(images):
        raise CohortImportError(
            f"{source}: {names[1]} has shape {list(labels.shape)}; one class index per image "
            f"({len(images)}) is needed (multi-label archives are not supported)"
        )
    return images, labels


def _binarise(labels: dict[str, str], positive: str, where: str) -> tuple[dict, list[str]]:
    """Labels mapped to '1' (== positive), '0' (any other value) or '' (missing), and a note."""
    values = sorted({value.strip() for value in labels.values()} - MISSING_VALUES, key=str.lower)
    if positive not in values:
        raise CohortImportError(
            f"--positive {positive!r} is not a value of {where} (values: {', '.join(values)})"
        )
    mapped = {
        key: "" if value.strip().lower() in MISSING_VALUES else str(int(value.strip() == positive))
        for key, value in labels.items()
    }
    others = ", ".join(value for value in values if value != positive)
    return mapped, [f"labels from {where}: {positive!r} is 1; {others} are 0; empty/n/a unlabelled"]


def _finish(out: Path, rows: list[dict], notes: list[str]) -> ImportResult:
    """Write and validate the manifest, write the log; the result of the import."""
    path = out / MANIFEST_NAME
    columns = list(dict.fromkeys(key for row in rows for key in row))
    manifest = io.StringIO(newline="")
    writer = csv.DictWriter(manifest, columns)
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, manifest.getvalue())  # whole or not at all
    table = read_manifest(path).table
    labelled = table["label"].dropna()
    notes = [
        *notes,
        f"wrote {path}: {len(table)} volumes, {table['subject_id'].nunique()} subjects, "
        f"{int((labelled == 1).sum())} label 1, {int((labelled == 0).sum())} label 0, "
        f"{len(table) - len(labelled)} unlabelled; whole volumes (no centroid): each is "
        "resized to data.size. Check it with `ssl3d data check`",
    ]
    _write_log(out, notes)
    return ImportResult(path, None, notes)


def _write_log(out: Path, notes: list[str]) -> None:
    (out / LOG_NAME).write_text("".join(f"{note}\n" for note in notes), encoding="utf-8")


def _nifti_stem(path: Path) -> str | None:
    """The file name without `.nii`/`.nii.gz`; None for other files."""
    for suffix in NIFTI_SUFFIXES:
        if path.is_file() and path.name.lower().endswith(suffix):
            return path.name[: -len(suffix)]
    return None


def _relative(path: Path, out: Path) -> str:
    """`path` as the manifest names it: relative to the manifest's folder."""
    return Path(os.path.relpath(path, out)).as_posix()
