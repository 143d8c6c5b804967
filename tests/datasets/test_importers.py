"""`ssl3d data import bids|medmnist|folder`: fixtures of each format built here, round-tripped
through `ssl3d data check` and a smoke run, and the refusals."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from benchmark.datasets.importers import CohortImportError, import_bids, import_medmnist
from benchmark.datasets.manifest import read_manifest
from benchmark.datasets.splits import read_splits
from conftest import write_nifti

from benchmark.cli import main

SUBJECTS = 16
SMOKE_RUN = ["--profile", "smoke", "--methods", "scratch"]


def volume(seed: int, anomalous: bool, side: int = 12) -> np.ndarray:
    """Noise with a bright cube in anomalous volumes."""
    image = np.random.default_rng(seed).normal(0.5, 0.1, (side, side, side))
    if anomalous:
        image[4:8, 4:8, 4:8] += 1.0
    return image


def make_bids(root, modalities=("T1w",)):
    """A BIDS dataset: participants.tsv with a `group` column, one anat volume per modality."""
    groups = ["patient" if s % 2 else "control" for s in range(SUBJECTS)]
    groups[0] = "n/a"
    ids = [f"sub-{s:02d}" for s in range(SUBJECTS)]
    root.mkdir(parents=True)
    pd.DataFrame({"participant_id": ids, "age": 40, "group": groups}).to_csv(
        root / "participants.tsv", sep="\t", index=False
    )
    for seed, (subject, group) in enumerate(zip(ids, groups)):
        for modality in modalities:
            write_nifti(
                root / subject / "anat" / f"{subject}_{modality}.nii.gz",
                volume(seed, group == "patient"),
            )
    (root / "dataset_description.json").write_text('{"Name": "fixture"}')
    return root


def make_medmnist(path, classes=3, counts=(16, 8, 8)):
    """A MedMNIST-3D-like archive: uint8 [N, 28, 28, 28] images, [N, 1] class labels."""
    arrays = {}
    for index, (split, count) in enumerate(zip(("train", "val", "test"), counts)):
        labels = np.arange(count) % classes
        # Distinct volumes in every split: the run's leak check compares voxel data.
        seeds = [1000 * index + 100 * count + i for i in range(count)]
        images = [volume(s, label == 1, side=28) for s, label in zip(seeds, labels, strict=True)]
        arrays[f"{split}_images"] = (np.clip(np.stack(images), 0, 1.5) * 150).astype(np.uint8)
        arrays[f"{split}_labels"] = labels[:, None]
    np.savez(path, **arrays)
    return path


def round_trip(manifest, out, *settings):
    """`ssl3d data check` passes and a smoke run finishes on the manifest (the same settings)."""
    main(["data", "check", str(manifest), *SMOKE_RUN[:2], *settings])  # status 1 on a problem
    run = ["run", *SMOKE_RUN, "--data", str(manifest), "--out", str(out)]
    main([*run, "finetune.protocols=[linear]", *settings])
    cells = list((out / "cells").rglob("*.json"))
    assert cells and all('"status": "done"' in cell.read_text() for cell in cells)


@pytest.mark.slow
def test_bids_round_trip(tmp_path, capsys):
    source = make_bids(tmp_path / "bids", modalities=("T1w", "FLAIR"))
    out = tmp_path / "cohort"
    main(
        ["data", "import", "bids", str(source), "--out", str(out)]
        + ["--label-column", "group", "--positive", "patient", "--suffix", "T1w"]
    )
    assert "'patient' is 1; control are 0" in capsys.readouterr().out
    table = read_manifest(out / "manifest.csv").table
    assert len(table) == SUBJECTS and table["image"].str.endswith("_T1w.nii.gz").all()
    assert table["label"].isna().sum() == 1  # n/a is unlabelled
    expected = (table["source_label"] == "patient").astype(int)
    assert (table["label"].dropna() == expected[table["label"].notna()]).all()
    round_trip(out / "manifest.csv", tmp_path / "run")


@pytest.mark.slow
def test_folder_round_trip(tmp_path):
    source = tmp_path / "volumes"
    rows = []
    for s in range(SUBJECTS):
        write_nifti(source / f"case{s:02d}.nii", volume(s, s % 3 == 0))
        rows.append({"filename": f"case{s:02d}.nii", "finding": "yes" if s % 3 == 0 else "no"})
    write_nifti(source / "extra.nii.gz", volume(99, False))  # not in the CSV: unlabelled
    pd.DataFrame(rows).to_csv(tmp_path / "labels.csv", index=False)
    out = tmp_path / "cohort"
    main(
        ["data", "import", "folder", str(source), "--out", str(out)]
        + ["--labels", str(tmp_path / "labels.csv"), "--file-column", "filename"]
        + ["--label-column", "finding", "--positive", "yes"]
    )
    table = read_manifest(out / "manifest.csv").table.set_index("subject_id")
    assert table.loc["case03", "label"] == 1 and table.loc["case04", "label"] == 0
    assert pd.isna(table.loc["extra", "label"])
    round_trip(out / "manifest.csv", tmp_path / "run")


@pytest.mark.slow
def test_medmnist_round_trip_keeps_the_official_test_set(tmp_path, capsys):
    archive = make_medmnist(tmp_path / "organmnist3d.npz")
    out = tmp_path / "cohort"
    main(
        ["data", "import", "medmnist", str(archive), "--out", str(out)]
        + ["--positive-class", "1", "--seeds", "0", "--fractions", "0.5"]
    )
    printed = capsys.readouterr().out
    assert "binarised one vs rest: class 1 is label 1, classes 0, 2 are label 0" in printed
    assert "binarised one vs rest" in (out / "import.log").read_text()
    table = read_manifest(out / "manifest.csv").table
    assert len(table) == 32 and (table["label"] == (table["source_label"] == "1")).all()
    splits = read_splits(out / "splits.csv")
    official = {
        split: set(table.loc[table["official_split"] == split, "subject_id"])
        for split in ("train", "val", "test")
    }
    assert set(splits.loc[splits["partition"] == "val", "subject_id"]) == official["val"]
    run = tmp_path / "run"
    round_trip(
        out / "manifest.csv",
        run,
        f"data.splits={out / 'splits.csv'}",
        "splits.folds=1",
        "splits.seeds=[0]",
        "splits.fractions=[0.5,1.0]",
    )
    used = read_splits(run / "data" / "splits.csv")
    assert set(used.loc[used["partition"] == "test", "subject_id"]) == official["test"]
    assert len(list((run / "cells").rglob("*.json"))) == 2  # 2 fractions x 1 fold x 1 seed


def test_medmnist_multi_class_needs_an_explicit_positive_class(tmp_path):
    archive = make_medmnist(tmp_path / "a.npz", counts=(6, 3, 3))
    with pytest.raises(CohortImportError, match="3 classes .*--positive-class K"):
        import_medmnist(archive, tmp_path / "out")
    with pytest.raises(CohortImportError, match="--positive-class 7 is not a class"):
        import_medmnist(archive, tmp_path / "out", positive_class=7)


def test_medmnist_binary_archive_keeps_its_labels(tmp_path):
    archive = make_medmnist(tmp_path / "a.npz", classes=2, counts=(8, 4, 4))
    result = import_medmnist(archive, tmp_path / "out", seeds=(0,), fractions=(1.0,))
    table = read_manifest(result.manifest).table
    assert (table["label"].astype(str) == table["source_label"]).all()
    assert not any("binarised" in note for note in result.notes)


def test_non_empty_out_is_refused_unless_forced(tmp_path):
    source = make_bids(tmp_path / "bids")
    out = tmp_path / "cohort"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(CohortImportError, match="not empty.*--force"):
        import_bids(source, out, "group", "patient")
    import_bids(source, out, "group", "patient", force=True)
    assert (out / "manifest.csv").is_file() and (out / "notes.txt").is_file()


def test_bids_refusals_name_the_fix(tmp_path):
    source = make_bids(tmp_path / "bids", modalities=("T1w", "T2w"))
    with pytest.raises(CohortImportError, match="several anatomical images.*--suffix"):
        import_bids(source, tmp_path / "a", "group", "patient")
    with pytest.raises(CohortImportError, match="no column 'diagnosis'.*--label-column"):
        import_bids(source, tmp_path / "b", "diagnosis", "patient", suffix="T1w")
    with pytest.raises(CohortImportError, match=r"--positive 'Patient' is not a value.*control"):
        import_bids(source, tmp_path / "c", "group", "Patient", suffix="T1w")
