"""The data of one run: the cohort in memory, its split file, and the rows each unit uses.

Without ``data.manifest`` the run generates the built-in phantom cohort of its profile once,
under ``OUT/data/phantom``. The split file is made from the ``splits`` settings (or read from
``data.splits``) and saved as ``OUT/data/splits.csv``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from benchmark.datasets.cohort import Cohort
from benchmark.datasets.manifest import LABEL_WORDS, SIDE_WORDS
from benchmark.datasets.phantom import generate_phantom
from benchmark.datasets.run_checks import DataCheck, check_run_data
from benchmark.datasets.splits import (
    check_pretraining_pool,
    make_splits,
    partition_subjects,
    read_splits,
    split_test_mode,
    training_subjects,
    write_splits,
)
from benchmark.datasets.volumes import Preprocessing
from benchmark.errors import UserError
from benchmark.files import write_atomic

# Where a phantom of other settings waits while a run that would replace it is checked.
PREVIOUS_PHANTOM = ".phantom.previous"

# The labels of unlabelled volumes, next to the manifest (the phantom writes it; a cohort may
# supply one the same way). Only a positive control reads it (docs/methods.md, "supervised").
POOL_TRUTH_FILE = "unlabelled_truth.csv"


class DataSettingError(UserError):
    """Data settings that do not fit the cohort (for example a split file of another cohort)."""


@dataclass
class RunData:
    """The preprocessed cohort, its splits and the fingerprint that identifies them."""

    manifest: Path
    cohort: Cohort
    splits: pd.DataFrame
    fingerprint: str

    def rows_of_subjects(self, subjects: Iterable[str], labelled: bool = True) -> np.ndarray:
        """Cohort positions of the (labelled or unlabelled) volumes of these subjects."""
        table = self.cohort.table
        wanted = table["subject_id"].isin(set(subjects))
        is_labelled = table["label"].notna()
        return np.flatnonzero(wanted & (is_labelled if labelled else ~is_labelled))

    def partition_rows(self, seed: int, fold: int, partition: str) -> np.ndarray:
        """Labelled volumes of one partition (``train``, ``val`` or ``test``) of a fold."""
        return self.rows_of_subjects(partition_subjects(self.splits, seed, fold, partition))

    def training_rows(self, seed: int, fold: int, fraction: float) -> np.ndarray:
        """Labelled volumes of the nested label-fraction subset of a fold's training set."""
        return self.rows_of_subjects(training_subjects(self.splits, seed, fold, fraction))

    @property
    def test_mode(self) -> str:
        """``fixed`` (one test set for every seed and fold) or ``rotating`` (outer folds)."""
        return split_test_mode(self.splits)

    def test_subjects(self, seed: int | None = None, fold: int | None = None) -> set[str]:
        """Test subjects of one seed and fold, or (without them) of any fold: the fixed test
        set, or in rotating mode every labelled subject (each is tested in some fold)."""
        if seed is None or fold is None:
            return set(self.splits.loc[self.splits["partition"] == "test", "subject_id"])
        return set(partition_subjects(self.splits, seed, fold, "test"))

    def pretraining_pool(self, pool: str) -> tuple[np.ndarray, str]:
        """Volumes self-supervised pretraining may see, and a sentence saying which.

        ``unlabelled``: the unlabelled rows; when the manifest has none, the labelled non-test
        volumes instead (said so). ``unlabelled+train``: both. Test subjects never enter: the
        leak check of the splits module is called on the result.

        With rotating test folds every labelled subject is a test subject of some fold, so the
        pool (shared by every fold of a run-scoped method) may hold unlabelled volumes only: the
        labelled alternatives are refused rather than made fold-scoped, which would multiply
        every method's pretraining by the number of folds.
        """
        table = self.cohort.table
        unlabelled = np.flatnonzero(table["label"].isna().to_numpy())
        if self.test_mode == "rotating" and (pool != "unlabelled" or not len(unlabelled)):
            raise DataSettingError(
                f"pretrain.pool={pool} with splits.test_mode=rotating: every labelled subject is "
                "a test subject of one fold, so pretraining on labelled volumes would see test "
                "data. "
                + (
                    "Use pretrain.pool=unlabelled."
                    if len(unlabelled)
                    else "The manifest has no unlabelled rows: add unlabelled volumes for "
                    "pretraining or use splits.test_mode=fixed."
                )
            )
        labelled_subjects = set(self.splits["subject_id"]) - self.test_subjects()
        labelled_non_test = self.rows_of_subjects(labelled_subjects)
        if pool == "unlabelled" and len(unlabelled):
            rows, note = unlabelled, f"{len(unlabelled)} unlabelled volumes"
        elif pool == "unlabelled":
            rows = labelled_non_test
            note = (
                f"the manifest has no unlabelled rows, so pretraining uses the images of the "
                f"{len(rows)} labelled non-test volumes (without their labels)"
            )
        elif pool == "unlabelled+train":
            rows = np.union1d(unlabelled, labelled_non_test)
            note = (
                f"{len(unlabelled)} unlabelled + {len(labelled_non_test)} labelled non-test volumes"
            )
        else:
            raise DataSettingError(
                f"pretrain.pool must be 'unlabelled' or 'unlabelled+train', got {pool!r}"
            )
        check_pretraining_pool(self.splits, table["subject_id"].iloc[rows].unique())
        return rows, note

    @cached_property
    def pool_truth(self) -> np.ndarray | None:
        """0/1 label of every unlabelled volume listed in ``unlabelled_truth.csv`` next to the
        manifest (columns ``subject_id``, ``side``, ``label``), by cohort row; -1 for labelled
        volumes and unlisted ones. None when the cohort has no such file."""
        path = self.manifest.parent / POOL_TRUTH_FILE
        if not path.exists():
            return None
        truth = pd.read_csv(path, dtype=str, keep_default_na=False)
        missing = {"subject_id", "label"} - set(truth.columns)
        if missing:
            raise DataSettingError(
                f"{path}: needs the columns subject_id, side (optional) and label; "
                f"{', '.join(sorted(missing))} missing"
            )
        sides = truth.get("side", pd.Series("", index=truth.index)).str.lower()
        labels = truth["label"].str.strip().str.lower().map(LABEL_WORDS)
        if labels.isna().any():
            line = int(np.flatnonzero(labels.isna().to_numpy())[0]) + 2
            raise DataSettingError(
                f"{path}, line {line}: label must be one of {', '.join(LABEL_WORDS)}, got "
                f"{truth['label'].iloc[line - 2]!r}"
            )
        by_sinus = dict(zip(zip(truth["subject_id"], sides.map(SIDE_WORDS).fillna("")), labels))
        table = self.cohort.table
        keys = zip(table["subject_id"].astype(str), table["side"].fillna("").astype(str))
        found = np.array([by_sinus.get(key, -1) for key in keys], dtype=np.int64)
        found[table["label"].notna().to_numpy()] = -1
        return found

    def images(self, rows: np.ndarray) -> Tensor:
        """``[len(rows), 1, S, S, S]`` float32 volumes."""
        return self.cohort.images[torch.as_tensor(rows, dtype=torch.long)]

    def labels(self, rows: np.ndarray) -> Tensor:
        """0/1 labels (long) of labelled rows."""
        return torch.tensor(self.cohort.table["label"].iloc[rows].astype(int).to_numpy())

    def subjects_fingerprint(self, rows: np.ndarray) -> str:
        """Identifies exactly which volumes a unit used (part of its config hash)."""
        table = self.cohort.table.iloc[np.sort(rows)]
        keys = (table["subject_id"].astype(str) + "/" + table["side"].astype(str)).tolist()
        return hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]


def phantom_manifest(cfg: DictConfig, out: Path, log: Callable[[str], None]) -> Path:
    """Generate the profile's phantom cohort under ``OUT/data/phantom`` unless it is there.

    A phantom of other settings is first moved aside to ``OUT/data/.phantom.previous``:
    ``PendingData.discard`` puts it back when the run is refused, ``commit`` removes it."""
    folder = out / "data" / "phantom"
    aside = out / "data" / PREVIOUS_PHANTOM
    if aside.exists() and not folder.exists():  # a run killed between moving aside and commit
        aside.rename(folder)
    settings = OmegaConf.to_container(cfg.phantom, resolve=True)
    stamp = folder / "ssl3d_settings.json"
    manifest = folder / "manifest.csv"
    if manifest.exists() and stamp.exists() and json.loads(stamp.read_text()) == settings:
        return manifest
    if folder.exists():
        if aside.exists():
            shutil.rmtree(aside)
        folder.rename(aside)
    log(
        f"generating the phantom cohort ({settings['labelled']} labelled + "
        f"{settings['unlabelled']} unlabelled subjects, {settings['size']}^3) in {folder}"
    )
    manifest = generate_phantom(
        folder,
        labelled=settings["labelled"],
        unlabelled=settings["unlabelled"],
        size=settings["size"],
        seed=settings["seed"],
        prevalence=settings["prevalence"],
        difficulty=settings["difficulty"],
        layout=settings["layout"],
        workers=cfg.data.workers,
    )
    write_atomic(stamp, json.dumps(settings, indent=2))
    return manifest


def preprocessing(cfg: DictConfig) -> Preprocessing:
    """The loader settings of ``data`` (part of the cohort cache key)."""
    low, high = cfg.data.clip_percentiles
    return Preprocessing(
        size=int(cfg.data.size),
        crop=int(cfg.data.crop),
        clip_percentiles=(float(low), float(high)),
        mirror_right=bool(cfg.data.mirror_right),
    )


def cohort_fingerprint(cohort: Cohort) -> str:
    """SHA-256 over the preprocessed volumes and their table: identifies the data of a run."""
    digest = hashlib.sha256()
    digest.update(cohort.images.numpy().tobytes())
    columns = [c for c in ("subject_id", "side", "label", "pathology") if c in cohort.table]
    digest.update(cohort.table[columns].to_csv(index=False).encode())
    return digest.hexdigest()[:16]


def prepare_data(cfg: DictConfig, out: Path, log: Callable[[str], None]) -> RunData:
    """Load (or generate) the cohort, make or read the splits, fingerprint both, and save the
    splits as ``OUT/data/splits.csv``."""
    pending = stage_data(cfg, out, log)
    pending.commit()
    return pending.data


@dataclass
class PendingData:
    """A run's data before the run may write: ``commit`` saves it under ``OUT/data`` once every
    check that could refuse the run has passed; ``discard`` leaves the folder as it was."""

    data: RunData
    out: Path

    def commit(self) -> None:
        write_splits(self.data.splits, self.out / "data" / "splits.csv")
        aside = self.out / "data" / PREVIOUS_PHANTOM
        if aside.exists():
            shutil.rmtree(aside)

    def discard(self) -> None:
        """Put back a phantom that this run's settings moved aside (see ``phantom_manifest``)."""
        aside = self.out / "data" / PREVIOUS_PHANTOM
        if aside.exists():
            folder = self.out / "data" / "phantom"
            shutil.rmtree(folder, ignore_errors=True)
            aside.rename(folder)


def stage_data(cfg: DictConfig, out: Path, log: Callable[[str], None]) -> PendingData:
    """Load (or generate) the cohort, make or read the splits, check both as ``ssl3d data
    check`` does (refusing on any problem) and fingerprint them; nothing under ``out`` is changed
    for good until ``commit``."""
    manifest = Path(cfg.data.manifest) if cfg.data.manifest else phantom_manifest(cfg, out, log)
    check = check_data(cfg, manifest)
    for note in check.notes:
        log(note)
    check.refuse()
    cohort, splits = check.cohort, check.splits
    log(f"cohort {manifest}: {len(cohort)} volumes of {cfg.data.size}^3")
    return PendingData(RunData(manifest, cohort, splits, cohort_fingerprint(cohort)), out)


def check_data(cfg: DictConfig, manifest: Path, cache_dir: str | Path | None = None) -> DataCheck:
    """Every check of the run's data (``datasets/run_checks.py``) with the settings of ``cfg``;
    ``cache_dir`` replaces ``data.cache_dir``. ``ssl3d run`` and ``ssl3d data check`` both call
    this, so they refuse the same cohorts."""
    return check_run_data(
        manifest,
        preprocessing(cfg),
        lambda cohort: run_splits(cfg, cohort),
        on_bad_rows=cfg.data.on_bad_rows,
        allow_small_volumes=bool(cfg.data.allow_small_volumes),
        cache_dir=cache_dir or cfg.data.cache_dir,
        workers=cfg.data.workers,
    )


def run_splits(cfg: DictConfig, cohort: Cohort) -> pd.DataFrame:
    """The split table of ``cohort``: read from ``data.splits``, else made from ``splits``."""
    if cfg.data.splits:
        splits = read_splits(cfg.data.splits)
        _check_split_subjects(splits, cohort, Path(cfg.data.splits))
    else:
        labelled = cohort.table[cohort.table["label"].notna()]
        splits = make_splits(
            labelled,
            test=float(cfg.splits.test),
            folds=int(cfg.splits.folds),
            seeds=tuple(cfg.splits.seeds),
            fractions=tuple(cfg.splits.fractions),
            test_seed=int(cfg.splits.test_seed),
            test_subjects=test_set_size(cfg),
            test_mode=str(cfg.splits.test_mode),
        )
    return splits


def test_set_size(cfg: DictConfig) -> int | None:
    """Exactly how many subjects the fixed test set has: ``splits.test_subjects``, else on the
    phantom ``phantom.test_subjects`` (profiles size it for the CI they promise), else None (the
    share ``splits.test``)."""
    if cfg.splits.test_subjects is not None:
        return int(cfg.splits.test_subjects)
    if not cfg.data.manifest and cfg.phantom.test_subjects is not None:
        return int(cfg.phantom.test_subjects)
    return None


def _check_split_subjects(splits: pd.DataFrame, cohort: Cohort, path: Path) -> None:
    labelled = set(cohort.table.loc[cohort.table["label"].notna(), "subject_id"])
    unknown = sorted(set(splits["subject_id"]) - labelled)
    if unknown:
        raise DataSettingError(
            f"{path}: {len(unknown)} subject(s) are not labelled subjects of the manifest "
            f"(first: {', '.join(unknown[:5])}); make the split file from this manifest with "
            "`ssl3d data splits MANIFEST --out FILE`"
        )
