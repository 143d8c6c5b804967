"""The built-in phantom cohort: procedural maxillary sinuses in FLAIR-like MRI, with findings.

The clinical cohort of Bhattacharya et al. (Int J CARS 2024) is private, so the benchmark ships
a cohort that is realistic enough for a comparison to mean something: per-subject anatomy
(size, shape, pose, wall and mucosa thickness), normal variants (septa, hypoplastic or
asymmetric sinuses, physiological mucosa up to a few millimetres), the four findings of the
paper with their typical morphology and location (``PATHOLOGIES``), several findings in one
sinus, and acquisition effects (blur, bias field, Rician noise). ``difficulty`` shrinks and
fades the findings and makes normal variants and noise more common. See docs/phantom.md for
the design and its calibration.

Each subject is drawn as a whole midface in world millimetres; the ``sinus`` layout stores a
``size``^3 cube around each sinus (right sinuses as they sit in the head, not mirrored), the
``head`` layout stores the head with each sinus's voxel centroid in the manifest, so the loader's
crop and mirror are exercised exactly as for registered clinical heads.
"""

from __future__ import annotations

import csv
import io
import json
import os
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import nibabel as nib
import numpy as np

from benchmark.files import write_atomic

from .phantom_anatomy import (
    AIR,
    CYST_FLUID,
    INFLAMED_MUCOSA,
    POLYP,
    SECRETIONS,
    Finding,
    Head,
    SinusAnatomy,
    draw_head,
)

GENERATOR_VERSION = 1
PATHOLOGIES = ("mucosal_thickening", "polyp", "retention_cyst", "opacification")
# How often each finding is the main one of an anomalous sinus (mucosal thickening is by far
# the most common incidental finding in population MRI, opacification the rarest).
FINDING_FREQUENCIES = {
    "mucosal_thickening": 0.45,
    "retention_cyst": 0.25,
    "polyp": 0.18,
    "opacification": 0.12,
}
SECOND_FINDING_PROBABILITY = 0.25
BILATERAL_CORRELATION = 0.4  # disease of one sinus makes the other one more likely
FIELD_OF_VIEW_MM = 65.0  # a sinus crop covers 65 mm, as 65 voxels of ~1 mm in the paper
SINUS_OFFSET_MM = 30.0  # sinus centres lie about 3 cm either side of the midline
HEAD_EXTENT = (2.4, 1.6, 1.6)  # head volume per axis, in multiples of the crop size
LAYOUTS = ("sinus", "head")


def _check_arguments(labelled, unlabelled, size, prevalence, difficulty, layout) -> None:
    if labelled < 0 or unlabelled < 0 or labelled + unlabelled == 0:
        raise ValueError(
            f"labelled ({labelled}) and unlabelled ({unlabelled}) must be >= 0 and not both 0"
        )
    if size < 16:
        raise ValueError(f"size must be at least 16 voxels per side, got {size}")
    if not 0 <= prevalence <= 1:
        raise ValueError(f"prevalence must be in [0, 1], got {prevalence}")
    if not 0 <= difficulty <= 1:
        raise ValueError(f"difficulty must be in [0, 1] (0 easy, 1 hard), got {difficulty}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")


def _rotation(rng: np.random.Generator, degrees: float) -> np.ndarray:
    angles = np.deg2rad(rng.normal(0, degrees, 3))
    matrix = np.eye(3)
    for axis, angle in enumerate(angles):
        c, s = np.cos(angle), np.sin(angle)
        i, j = [k for k in range(3) if k != axis]
        turn = np.eye(3)
        turn[i, i], turn[i, j], turn[j, i], turn[j, j] = c, -s, s, c
        matrix = matrix @ turn
    return matrix


def _findings(rng: np.random.Generator, difficulty: float) -> list[Finding]:
    """The findings of one anomalous sinus: a main one and, sometimes, a second one."""
    kinds = list(FINDING_FREQUENCIES)
    main = rng.choice(kinds, p=list(FINDING_FREQUENCIES.values()))
    chosen = [main]
    if main != "opacification" and rng.random() < SECOND_FINDING_PROBABILITY:
        others = [k for k in kinds if k not in (main, "opacification")]
        chosen.append(rng.choice(others))
    fade = 1 - 0.5 * difficulty  # lesions fade towards the air they sit in as difficulty rises
    shrink = 1 - 0.4 * difficulty
    findings = []
    for kind in chosen:
        if kind == "opacification":
            findings.append(Finding(kind, 0.0, None, SECRETIONS * rng.uniform(0.85, 1.15)))
        elif kind == "mucosal_thickening":
            size = rng.uniform(3.5, 7.0) * (1 - 0.45 * difficulty)
            findings.append(Finding(kind, size, None, AIR + (INFLAMED_MUCOSA - AIR) * fade))
        elif kind == "polyp":
            direction = rng.normal(size=3)
            direction[2] = (
                -abs(direction[2]) * 0.5
            )  # polyps mostly hang from lateral/inferior walls
            findings.append(
                Finding(
                    kind,
                    rng.uniform(3.0, 6.0) * shrink,
                    direction / np.linalg.norm(direction),
                    AIR + (POLYP - AIR) * fade,
                )
            )
        else:  # retention cyst: a fluid dome, on the floor in most sinuses
            direction = rng.normal(scale=0.35, size=3)
            direction[2] = -1.0 if rng.random() < 0.8 else rng.normal()
            findings.append(
                Finding(
                    kind,
                    rng.uniform(6.0, 12.0) * shrink,
                    direction / np.linalg.norm(direction),
                    AIR + (CYST_FLUID - AIR) * fade,
                )
            )
    return findings


def sample_head(
    rng: np.random.Generator,
    anomalous: tuple[bool, bool],
    difficulty: float,
    nominal: list[np.ndarray],
) -> Head:
    """Random anatomy, variants, findings and acquisition of one subject."""
    # Sinus volume varies several-fold between healthy adults: a common size factor per subject,
    # then per-axis shape variation, so the amount of air alone does not tell the label.
    overall = rng.lognormal(0, 0.18)
    semi_axes = overall * np.array([rng.normal(14, 1.5), rng.normal(17, 1.8), rng.normal(17, 2.0)])
    semi_axes = np.clip(semi_axes, 8, 24)
    pose = _rotation(rng, 5)
    shift = rng.normal(0, 2.0, 3)
    hypoplastic_side = rng.integers(2) if rng.random() < 0.05 + 0.15 * difficulty else None
    sinuses = []
    for index, side in enumerate(("L", "R")):
        scale = 1 + rng.normal(0, 0.06, 3)
        if hypoplastic_side == index:
            scale *= rng.uniform(0.6, 0.8)
        septum = None
        if rng.random() < 0.1 + 0.25 * difficulty:
            normal = rng.normal(size=3) * np.array([0.3, 1.0, 0.5])
            lateral = rng.normal(size=3) * np.array([1.0, 0.2, 0.6])
            septum = (normal / np.linalg.norm(normal), lateral / np.linalg.norm(lateral))
        sinuses.append(
            SinusAnatomy(
                side=side,
                centre_mm=nominal[index] + shift + rng.normal(0, 1.0, 3),
                semi_axes_mm=semi_axes * scale,
                rotation=pose @ _rotation(rng, 2),
                squareness=rng.uniform(2.2, 3.2),
                wall_mm=rng.uniform(1.0, 2.0),
                mucosa_mm=rng.uniform(0.5, 1.5 + 2.0 * difficulty),
                deformation=rng.uniform(0.04, 0.08 + 0.08 * difficulty),
                septum=septum,
                findings=_findings(rng, difficulty) if anomalous[index] else [],
            )
        )
    tissues = ("soft", "muscle", "fat", "bone", "mucosa", "marrow")
    return Head(
        sinuses=sinuses,
        tissue_gain={t: float(rng.normal(1, 0.07)) for t in tissues},
        noise_sigma=float(rng.uniform(0.015, 0.025) + 0.04 * difficulty),
        blur_sigma_voxels=0.0,  # set per voxel size by the renderer
        bias_strength=float(rng.uniform(0.05, 0.2)),
        seed=int(rng.integers(2**31)),
    )


class _Geometry:
    """Voxel grid of a head for a crop ``size``: spacing, shape, origin, nominal centroids."""

    def __init__(self, size: int):
        self.size = size
        self.spacing = FIELD_OF_VIEW_MM / size
        self.shape = tuple(int(round(extent * size)) for extent in HEAD_EXTENT)
        self.origin = -(np.array(self.shape) - 1) / 2 * self.spacing
        self.centroids = [
            self.voxel(np.array([-SINUS_OFFSET_MM, 0, 0])),
            self.voxel(np.array([SINUS_OFFSET_MM, 0, 0])),
        ]

    def voxel(self, world_mm: np.ndarray) -> np.ndarray:
        return np.rint((world_mm - self.origin) / self.spacing).astype(int)

    def world(self, voxel: np.ndarray) -> np.ndarray:
        return self.origin + np.asarray(voxel) * self.spacing

    def grid(
        self, start: np.ndarray | None = None, shape: tuple[int, ...] | None = None
    ) -> np.ndarray:
        """World mm ``[3, ...]`` of the head's voxels, or of a window ``shape`` at ``start``."""
        start = np.zeros(3, dtype=int) if start is None else start
        shape = self.shape if shape is None else shape
        axes = [
            self.origin[k] + self.spacing * (start[k] + np.arange(n)) for k, n in enumerate(shape)
        ]
        return np.stack(np.meshgrid(*axes, indexing="ij"))

    def affine(self, corner_voxel: np.ndarray) -> np.ndarray:
        affine = np.diag([self.spacing] * 3 + [1.0])
        affine[:3, 3] = self.world(corner_voxel)
        return affine

    def crop_start(self, side_index: int) -> np.ndarray:
        return self.centroids[side_index] - self.size // 2


def _save(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    image = nib.Nifti1Image(data, affine)
    image.header.set_xyzt_units("mm")
    nib.save(image, path)


def _draw_subject(job: tuple) -> list[dict]:
    """Render and write one subject; returns its two manifest rows (with the hidden truth)."""
    out, seed, kind, index, size, prevalence, difficulty, layout = job
    rng = np.random.default_rng([seed, 0 if kind == "P" else 1, index])
    left = rng.random() < prevalence
    right_probability = prevalence + BILATERAL_CORRELATION * ((1.0 if left else 0.0) - prevalence)
    anomalous = (bool(left), bool(rng.random() < right_probability))
    geometry = _Geometry(size)
    nominal = [geometry.world(c) for c in geometry.centroids]
    head = sample_head(rng, anomalous, difficulty, nominal)
    head.blur_sigma_voxels = (0.6 + 0.8 * difficulty) / geometry.spacing
    if layout == "head":
        image, masks = draw_head(head, geometry.grid(), geometry.spacing)

    subject = f"{kind}{index + 1:04d}"
    rows = []
    for side_index, sinus in enumerate(head.sinuses):
        row = {"subject_id": subject, "side": sinus.side}
        findings = sorted({f.kind for f in sinus.findings})
        row["truth_label"] = int(bool(findings))
        row["truth_pathology"] = ";".join(findings)
        if layout == "sinus":
            # Only the crop around this sinus is drawn: the same anatomy as in the head layout.
            start = geometry.crop_start(side_index)
            grid = geometry.grid(start, (size,) * 3)
            crop, masks = draw_head(head, grid, geometry.spacing, stream=side_index + 1)
            row["image"] = f"images/{subject}_{sinus.side}.nii.gz"
            _save(out / row["image"], crop, geometry.affine(start))
            if findings and kind == "P":
                row["mask"] = f"masks/{subject}_{sinus.side}.nii.gz"
                _save(out / row["mask"], masks[side_index].astype(np.uint8), geometry.affine(start))
        else:
            row["image"] = f"images/{subject}.nii.gz"
            if side_index == 0:
                _save(out / row["image"], image, geometry.affine(np.zeros(3)))
            for axis, value in zip("xyz", geometry.centroids[side_index]):
                row[f"centroid_{axis}"] = int(value)
            if findings and kind == "P":
                row["mask"] = f"masks/{subject}_{sinus.side}.nii.gz"
                _save(
                    out / row["mask"],
                    masks[side_index].astype(np.uint8),
                    geometry.affine(np.zeros(3)),
                )
        rows.append(row)
    return rows


def generate_phantom(
    out_dir: str | Path,
    *,
    labelled: int,
    unlabelled: int,
    size: int = 65,
    seed: int = 0,
    prevalence: float = 0.55,
    difficulty: float = 0.5,
    layout: str = "sinus",
    workers: int | None = None,
) -> Path:
    """Write a phantom cohort (NIfTI images, anomaly masks, manifest) and return the manifest.

    ``labelled`` and ``unlabelled`` count subjects (two sinuses each). Labelled rows carry
    ``label``, ``pathology`` and, when anomalous, a ``mask``; unlabelled rows carry none of
    these (their truth is in ``unlabelled_truth.csv``). The output depends only on the
    arguments, never on ``workers``.
    """
    _check_arguments(labelled, unlabelled, size, prevalence, difficulty, layout)
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(exist_ok=True)
    jobs = [(out, seed, "P", i, size, prevalence, difficulty, layout) for i in range(labelled)]
    jobs += [(out, seed, "U", i, size, prevalence, difficulty, layout) for i in range(unlabelled)]
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    if workers == 1:
        subjects = [_draw_subject(job) for job in jobs]
    else:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            subjects = list(
                pool.map(_draw_subject, jobs, chunksize=max(1, len(jobs) // (4 * workers)))
            )
    rows = [row for subject in subjects for row in subject]
    _write_tables(out, rows, layout)
    parameters = {
        "generator_version": GENERATOR_VERSION,
        "labelled": labelled,
        "unlabelled": unlabelled,
        "size": size,
        "seed": seed,
        "prevalence": prevalence,
        "difficulty": difficulty,
        "layout": layout,
        "spacing_mm": FIELD_OF_VIEW_MM / size,
        "finding_frequencies": FINDING_FREQUENCIES,
        "anomalous_labelled_sinuses": sum(
            r["truth_label"] for r in rows if r["subject_id"][0] == "P"
        ),
        "labelled_sinuses": 2 * labelled,
    }
    write_atomic(out / "phantom.json", json.dumps(parameters, indent=2))
    return out / "manifest.csv"


def _write_tables(out: Path, rows: list[dict], layout: str) -> None:
    """``manifest.csv`` and ``unlabelled_truth.csv``, each written whole or not at all."""
    columns = ["subject_id", "side", "image", "label", "pathology", "mask"]
    if layout == "head":
        columns += ["centroid_x", "centroid_y", "centroid_z"]
    manifest = io.StringIO(newline="")
    writer = csv.DictWriter(manifest, columns, extrasaction="ignore", restval="")
    writer.writeheader()
    for row in rows:
        labelled = row["subject_id"].startswith("P")
        writer.writerow(
            {
                **row,
                "label": row["truth_label"] if labelled else "",
                "pathology": row["truth_pathology"] if labelled else "",
            }
        )
    write_atomic(out / "manifest.csv", manifest.getvalue())
    truth = io.StringIO(newline="")
    writer = csv.writer(truth)
    writer.writerow(["subject_id", "side", "label", "pathology"])
    for row in rows:
        if row["subject_id"].startswith("U"):
            writer.writerow(
                [row["subject_id"], row["side"], row["truth_label"], row["truth_pathology"]]
            )
    write_atomic(out / "unlabelled_truth.csv", truth.getvalue())
