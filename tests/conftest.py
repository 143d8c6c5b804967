"""Shared test helpers: tiny synthetic NIfTI cohorts written to a temporary folder.

`cohort_factory(...)` writes head volumes with a left and a right "sinus" each (a dark box in
noisy tissue; an anomalous sinus holds a bright lesion, which its mask marks), and a manifest
listing both sinuses of every subject by centroid. Use `SMALL` as the preprocessing for them:
the volumes are 24 x 16 x 16 voxels and the crop is 9, so tests stay fast.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from benchmark.datasets.volumes import Preprocessing

SMALL = Preprocessing(size=8, crop=9)
HEAD_SHAPE = (24, 16, 16)
# Canonical (RAS+) voxel centroids: the subject's left is low x, the right mirrors it.
LEFT_CENTROID = (6, 8, 8)
RIGHT_CENTROID = (HEAD_SHAPE[0] - 1 - LEFT_CENTROID[0], 8, 8)


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """Save `data` as float32 NIfTI (identity affine unless given); return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    affine = np.eye(4) if affine is None else affine
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine), path)
    return path


def write_manifest(path: Path, rows: list[dict]) -> Path:
    """Write rows (dicts; missing keys become empty cells) as a manifest CSV."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="") as stream:
        writer = csv.DictWriter(stream, columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    return path


def synthetic_head(seed: int, anomalous_sides: str = "") -> tuple[np.ndarray, np.ndarray]:
    """A noisy head with two dark sinuses; a bright lesion in each side of `anomalous_sides`.

    Returns (image, mask) in canonical RAS+ voxel order; the mask marks the lesions.
    """
    rng = np.random.default_rng(seed)
    image = 0.5 + 0.1 * rng.standard_normal(HEAD_SHAPE)
    mask = np.zeros(HEAD_SHAPE, dtype=np.float32)
    for side, (x, y, z) in (("L", LEFT_CENTROID), ("R", RIGHT_CENTROID)):
        image[x - 2 : x + 3, y - 2 : y + 3, z - 2 : z + 3] = 0.05
        if side in anomalous_sides:
            lesion = (slice(x - 1, x + 2), slice(y - 2, y), slice(z - 2, z + 1))
            image[lesion] = 1.0
            mask[lesion] = 1
    return image, mask


@dataclass
class SyntheticCohort:
    manifest: Path
    rows: list[dict]


@pytest.fixture
def cohort_factory(tmp_path):
    """A function writing a synthetic cohort under tmp_path; see the module docstring.

    Subject i's left sinus is anomalous when i % 2 == 1 and its right sinus when i % 4 >= 2, so
    subjects cover every label pattern. `unlabelled` extra subjects have empty labels.
    """

    def make(
        subjects: int = 4, unlabelled: int = 0, masks: bool = True, name: str = "cohort"
    ) -> SyntheticCohort:
        root = tmp_path / name
        rows = []
        for index in range(subjects + unlabelled):
            subject = f"sub{index:03d}"
            labelled = index < subjects
            anomalous = ("L" if index % 2 == 1 else "") + ("R" if index % 4 >= 2 else "")
            image, mask = synthetic_head(index, anomalous if labelled else "")
            write_nifti(root / "images" / f"{subject}.nii.gz", image)
            if masks and labelled:
                write_nifti(root / "masks" / f"{subject}.nii.gz", mask)
            for side, centroid in (("L", LEFT_CENTROID), ("R", RIGHT_CENTROID)):
                row = {"subject_id": subject, "image": f"images/{subject}.nii.gz"}
                row["label"] = str(int(side in anomalous)) if labelled else ""
                row["side"] = side
                row["pathology"] = "polyp" if labelled and side in anomalous else ""
                row.update(zip(("centroid_x", "centroid_y", "centroid_z"), map(str, centroid)))
                row["mask"] = f"masks/{subject}.nii.gz" if masks and labelled else ""
                rows.append(row)
        return SyntheticCohort(write_manifest(root / "manifest.csv", rows), rows)

    return make
