"""load_cohort: one tensor per cohort, cached once, rebuilt when anything it depends on changes."""

import logging
import os

import numpy as np
import pytest
import torch
from benchmark.datasets import volumes
from benchmark.datasets.cohort import cache_key, load_cohort
from benchmark.datasets.manifest import ManifestError, read_manifest
from benchmark.datasets.volumes import Preprocessing
from conftest import SMALL, write_manifest, write_nifti


def forbid_loading(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(volumes, "load_sample", fail)


def test_cohort_tensors(cohort_factory):
    cohort = cohort_factory(subjects=2, unlabelled=1)
    loaded = load_cohort(cohort.manifest, SMALL, workers=1)
    assert len(loaded) == 6 and loaded.table.index.tolist() == list(range(6))
    assert loaded.images.dtype == torch.float32 and loaded.images.shape == (6, 1, 8, 8, 8)
    assert loaded.images.min() == 0 and loaded.images.max() == 1
    assert loaded.masks.dtype == torch.bool and loaded.masks.shape == loaded.images.shape
    has_lesion = loaded.masks.flatten(1).any(1).tolist()
    assert has_lesion == [label == 1 for label in loaded.table["label"].fillna(0)]
    assert loaded.excluded == []
    assert loaded.cache_path.parent == cohort.manifest.parent / ".ssl3d_cache"


def test_cohort_without_masks(cohort_factory):
    cohort = cohort_factory(subjects=1, masks=False)
    assert load_cohort(cohort.manifest, SMALL, workers=1).masks is None


def test_second_load_uses_the_cache(cohort_factory, monkeypatch, caplog):
    cohort = cohort_factory(subjects=2)
    first = load_cohort(cohort.manifest, SMALL, workers=1)
    forbid_loading(monkeypatch)
    caplog.set_level(logging.INFO)
    second = load_cohort(cohort.manifest, SMALL, workers=1)
    assert "Loaded 4 preprocessed volumes from" in caplog.text
    assert torch.equal(first.images, second.images) and torch.equal(first.masks, second.masks)
    assert os.listdir(first.cache_path.parent) == [first.cache_path.name]


def test_cache_key_follows_settings_and_files(cohort_factory):
    cohort = cohort_factory(subjects=2)
    manifest = read_manifest(cohort.manifest)
    key = cache_key(manifest, SMALL)
    assert cache_key(manifest, SMALL) == key
    assert cache_key(manifest, Preprocessing(size=8, crop=9, clip_percentiles=[1, 99])) == key
    assert cache_key(manifest, Preprocessing(size=8, crop=9, mirror_right=False)) != key
    rows = [dict(row) for row in cohort.rows]
    rows[0]["label"] = "1"  # labels do not change the tensors
    rows[0]["pathology"] = "polyp"
    assert cache_key(read_manifest(write_manifest(cohort.manifest, rows)), SMALL) == key
    rows[0]["centroid_y"] = "7"
    assert cache_key(read_manifest(write_manifest(cohort.manifest, rows)), SMALL) != key
    image = manifest.table["image"][0]
    stamp = os.stat(image).st_mtime_ns + 10**9
    os.utime(image, ns=(stamp, stamp))
    assert cache_key(manifest, SMALL) != key


def test_changed_file_is_preprocessed_again(cohort_factory, monkeypatch):
    cohort = cohort_factory(subjects=1)
    first = load_cohort(cohort.manifest, SMALL, workers=1)
    image = first.table["image"][0]
    write_nifti(
        cohort.manifest.parent / cohort.rows[0]["image"],
        np.random.default_rng(9).normal(size=(24, 16, 16)),
    )
    second = load_cohort(cohort.manifest, SMALL, workers=1)
    assert second.cache_path != first.cache_path and image == second.table["image"][0]
    assert not torch.equal(first.images, second.images)


def test_corrupt_cache_is_rebuilt(cohort_factory, monkeypatch, caplog):
    cohort = cohort_factory(subjects=1)
    first = load_cohort(cohort.manifest, SMALL, workers=1)
    first.cache_path.write_bytes(b"torn")
    second = load_cohort(cohort.manifest, SMALL, workers=1)
    assert "cannot be read" in caplog.text and "rebuilding it" in caplog.text
    assert torch.equal(first.images, second.images)
    forbid_loading(monkeypatch)
    assert torch.equal(load_cohort(cohort.manifest, SMALL, workers=1).images, first.images)


def test_unwritable_cache_folder_only_costs_the_reuse(cohort_factory, tmp_path, caplog):
    cohort = cohort_factory(subjects=1)
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    loaded = load_cohort(cohort.manifest, SMALL, cache_dir=blocker / "cache", workers=1)
    assert len(loaded) == 2 and loaded.cache_path is None
    assert "Cannot write the cohort cache" in caplog.text


def break_files(cohort):
    """Sub000's image becomes constant; sub001's right centroid moves off the volume."""
    write_nifti(cohort.manifest.parent / cohort.rows[0]["image"], np.zeros((24, 16, 16)))
    rows = [dict(row) for row in cohort.rows]
    rows[3]["centroid_x"] = "40"
    write_manifest(cohort.manifest, rows)


def test_files_that_fail_to_load_are_all_reported(cohort_factory):
    cohort = cohort_factory(subjects=2)
    break_files(cohort)
    with pytest.raises(ManifestError) as caught:
        load_cohort(cohort.manifest, SMALL, workers=1)
    messages = [str(problem) for problem in caught.value.problems]
    assert len(messages) == 3
    assert messages[0].startswith(f"{cohort.manifest}, line 2, column 'image': file '")
    assert "sub000.nii.gz': the 9-voxel crop around the centroid is constant" in messages[0]
    assert messages[1].startswith(f"{cohort.manifest}, line 3, column 'image'")
    assert "line 5, column 'image'" in messages[2] and "centroid_x=40" in messages[2]


def test_files_that_fail_to_load_can_be_excluded(cohort_factory, monkeypatch):
    cohort = cohort_factory(subjects=2)
    break_files(cohort)
    manifest = read_manifest(cohort.manifest, on_bad_rows="exclude")
    loaded = load_cohort(manifest, SMALL, workers=1)
    assert loaded.table["row"].tolist() == [4]
    assert len(loaded.images) == len(loaded.masks) == 1
    assert [problem.row for problem in loaded.excluded] == [2, 3, 5]
    forbid_loading(monkeypatch)
    assert load_cohort(manifest, SMALL, workers=1).excluded == loaded.excluded


def test_worker_processes_give_the_same_cohort(cohort_factory, tmp_path):
    cohort = cohort_factory(subjects=2)
    inline = load_cohort(cohort.manifest, SMALL, cache_dir=tmp_path / "inline", workers=1)
    pooled = load_cohort(cohort.manifest, SMALL, cache_dir=tmp_path / "pooled", workers=2)
    assert torch.equal(inline.images, pooled.images) and torch.equal(inline.masks, pooled.masks)
