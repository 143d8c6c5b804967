"""The phantom cohort: determinism, manifest contract, NIfTI geometry, masks, layouts."""

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from benchmark.datasets.manifest import read_manifest
from benchmark.datasets.phantom import PATHOLOGIES, generate_phantom
from benchmark.datasets.volumes import Preprocessing, load_volume

SIZE = 25


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantom")
    manifest = generate_phantom(out, labelled=12, unlabelled=4, size=SIZE, seed=3, workers=1)
    return out, pd.read_csv(manifest, keep_default_na=False)


def _voxels(path):
    return np.asarray(nib.load(path).dataobj)


def test_same_seed_same_bytes_whatever_the_workers(cohort, tmp_path):
    out, table = cohort
    again = generate_phantom(tmp_path, labelled=12, unlabelled=4, size=SIZE, seed=3, workers=2)
    assert again.read_text() == (out / "manifest.csv").read_text()
    for image in table["image"][:6]:
        assert np.array_equal(_voxels(out / image), _voxels(tmp_path / image))
    other = generate_phantom(
        tmp_path / "other", labelled=12, unlabelled=4, size=SIZE, seed=4, workers=1
    )
    first = table["image"][0]
    assert not np.array_equal(_voxels(out / first), _voxels(other.parent / first))


def test_manifest_follows_the_contract(cohort):
    out, table = cohort
    assert list(table.columns) == ["subject_id", "side", "image", "label", "pathology", "mask"]
    assert len(table) == 2 * 16 and set(table["side"]) == {"L", "R"}
    labelled = table[table["subject_id"].str.startswith("P")]
    unlabelled = table[table["subject_id"].str.startswith("U")]
    assert set(labelled["label"].astype(int)) == {0, 1}
    assert (unlabelled["label"] == "").all() and (unlabelled["mask"] == "").all()
    for _, row in labelled.iterrows():
        findings = [f for f in row["pathology"].split(";") if f]
        assert set(findings) <= set(PATHOLOGIES)
        assert bool(findings) == (int(row["label"]) == 1) == bool(row["mask"])
    truth = pd.read_csv(out / "unlabelled_truth.csv")
    assert len(truth) == len(unlabelled)
    manifest = read_manifest(out / "manifest.csv")
    assert len(manifest.table) == len(table) and not manifest.excluded


def test_masks_mark_tissue_inside_the_cavity(cohort):
    out, table = cohort
    anomalous = table[table["mask"] != ""]
    for _, row in anomalous.iterrows():
        mask = _voxels(out / row["mask"]).astype(bool)
        image = _voxels(out / row["image"])
        assert mask.any()
        air = np.percentile(image, 5)
        assert np.median(image[mask]) > air + 0.1  # lesions are tissue or fluid, not air


def test_nifti_geometry_places_each_sinus_where_it_is_in_the_head(cohort):
    out, table = cohort
    left = nib.load(out / table["image"][0])
    right = nib.load(out / table["image"][1])
    assert left.header.get_zooms() == pytest.approx((65 / SIZE,) * 3)
    assert nib.aff2axcodes(left.affine) == ("R", "A", "S")
    centre = lambda img: (img.affine @ [*(np.array(img.shape) / 2), 1])[0]  # noqa: E731
    assert centre(left) < 0 < centre(right)  # RAS: the subject's right is +x


def test_mirrored_right_sinus_looks_like_the_left_one(cohort):
    out, table = cohort
    settings = Preprocessing(size=SIZE - 1, crop=SIZE)
    gains = []
    for subject in table["subject_id"].unique()[:6]:
        rows = table[table["subject_id"] == subject].set_index("side")
        left = load_volume(out / rows.loc["L", "image"], settings, side="L")
        mirrored = load_volume(out / rows.loc["R", "image"], settings, side="R")
        as_stored = load_volume(out / rows.loc["R", "image"], settings, side="")
        correlation = lambda a, b: np.corrcoef(a.ravel(), b.ravel())[0, 1]  # noqa: E731
        gains.append(correlation(left, mirrored) - correlation(left, as_stored))
    assert np.mean(gains) > 0.2


def test_head_layout_crops_to_the_sinus_layout(cohort, tmp_path):
    out, sinus_table = cohort
    manifest = generate_phantom(
        tmp_path, labelled=3, unlabelled=0, size=SIZE, seed=3, layout="head"
    )
    table = pd.read_csv(manifest, keep_default_na=False)
    assert {"centroid_x", "centroid_y", "centroid_z"} <= set(table.columns)
    assert table.groupby("subject_id")["image"].nunique().eq(1).all()
    settings = Preprocessing(size=SIZE, crop=SIZE, mirror_right=False)
    for (_, head_row), (_, sinus_row) in zip(table.iterrows(), sinus_table.head(6).iterrows()):
        centroid = (head_row["centroid_x"], head_row["centroid_y"], head_row["centroid_z"])
        crop = load_volume(tmp_path / head_row["image"], settings, centroid=centroid)
        sinus = load_volume(out / sinus_row["image"], settings)
        assert np.corrcoef(crop.ravel(), sinus.ravel())[0, 1] > 0.85  # same anatomy, other noise
    assert (table["mask"] != "").sum() == (sinus_table.head(6)["mask"] != "").sum()


def test_prevalence_is_roughly_the_requested_one(tmp_path):
    manifest = generate_phantom(
        tmp_path, labelled=150, unlabelled=0, size=16, seed=0, prevalence=0.3, workers=2
    )
    labels = pd.read_csv(manifest)["label"]
    assert labels.mean() == pytest.approx(0.3, abs=0.07)


@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(labelled=-1, unlabelled=2), "must be >= 0"),
        (dict(labelled=2, unlabelled=2, size=8), "size must be at least 16"),
        (dict(labelled=2, unlabelled=2, prevalence=1.5), "prevalence must be in"),
        (dict(labelled=2, unlabelled=2, difficulty=2), "difficulty must be in"),
        (dict(labelled=2, unlabelled=2, layout="brain"), "layout must be one of"),
    ],
)
def test_bad_arguments_are_refused(tmp_path, arguments, message):
    with pytest.raises(ValueError, match=message):
        generate_phantom(tmp_path, **arguments)
