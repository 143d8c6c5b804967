"""report_check (`ssl3d data check`) and draw_examples (`ssl3d data show`)."""

import numpy as np
import pytest
from benchmark.datasets.check import report_check, report_unreadable
from benchmark.datasets.cohort import load_cohort
from benchmark.datasets.manifest import ManifestError
from benchmark.datasets.show import draw_examples
from conftest import SMALL, write_manifest, write_nifti

from benchmark.config import load_config
from benchmark.rundata import check_data


def check_manifest(path, *settings):
    """The report `ssl3d data check --profile smoke` prints, on the 9-voxel crop of SMALL."""
    cfg = load_config("smoke", ["data.size=8", "data.crop=9", "data.workers=1", *settings])
    return report_check(check_data(cfg, path))


def test_check_summarises_a_good_cohort(cohort_factory):
    cohort = cohort_factory(subjects=8, unlabelled=1)
    report = check_manifest(cohort.manifest)
    assert report.ok and report.problems == []
    for line in [
        "Subjects: 9 (8 with labels)",
        "Volumes: 18 usable, 0 bad rows",
        "Labels: 8 normal, 8 anomalous, 2 unlabelled",
        "Pathologies: polyp x8",
        "Sides: L x9, R x9",
        "Stored shapes (9 image files): (24, 16, 16) x9",
        "Voxel spacings (mm): (1.0, 1.0, 1.0) x9",
        "Centroids: 18 rows (stored voxels: x 6..17, y 8..8, z 8..8)",
        "Masks: 16 rows, 8 of them mark voxels",
        "Splits: 2 test subjects, 2 fold(s) x 2 seed(s), label fractions 0.5, 1",
        "No problems found.",
    ]:
        assert line in report.text.splitlines()


def test_check_reports_every_problem_of_a_broken_cohort(cohort_factory):
    cohort = cohort_factory(subjects=8)
    rows = [dict(row) for row in cohort.rows]
    rows[0]["side"] = "X"  # a CSV problem
    rows[3]["centroid_x"] = "22"  # the crop leaves the volume
    rows[4]["mask"] = rows[0]["mask"]  # sub002 L is normal, sub000 R's lesion is not in it
    write_manifest(cohort.manifest, rows)
    bad = np.full((24, 16, 16), np.nan)
    write_nifti(cohort.manifest.parent / rows[5]["image"], bad)  # sub002: NaN voxels
    report = check_manifest(cohort.manifest, "splits.fractions=[1.0]")
    assert not report.ok
    lines = [problem.split(f"{cohort.manifest}, ")[1] for problem in report.problems]
    assert [line.split(":")[0] for line in lines] == [
        "line 2, column 'side'",
        "line 5, column 'image'",
        "line 6, column 'image'",
        "line 7, column 'image'",
    ]
    assert "crop around the centroid leaves the volume: centroid_x needs 18..26" in lines[1]
    assert "has 6144 NaN or infinite voxels" in lines[2]
    assert "Volumes: 12 usable, 4 bad rows" in report.text
    assert "4 problem(s):" in report.text


def test_check_flags_masks_that_contradict_labels(cohort_factory):
    cohort = cohort_factory(subjects=8)
    rows = [dict(row) for row in cohort.rows]
    rows[0]["mask"] = rows[2]["mask"]  # sub000 L (normal) gets sub001's mask: lesion on the left
    rows[2]["mask"] = rows[1]["mask"]  # sub001 L (anomalous) gets sub000's: no lesion there
    write_manifest(cohort.manifest, rows)
    report = check_manifest(cohort.manifest)
    assert len(report.problems) == 1
    assert (
        "line 2, column 'mask': label 0 (normal) but its mask marks 8 voxels" in report.problems[0]
    )
    assert "1 anomalous row(s) have a mask that marks no voxel of the sample" in report.text
    excluded = check_manifest(cohort.manifest, "data.on_bad_rows=exclude")
    assert excluded.ok and "- excluded: " in excluded.text


def test_check_of_an_unreadable_manifest(tmp_path):
    path = write_manifest(tmp_path / "manifest.csv", [{"subject_id": "a", "image": "a.nii"}])
    with pytest.raises(ManifestError) as caught:
        check_manifest(path)
    report = report_unreadable(path, caught.value)
    assert not report.ok
    assert report.problems == [
        f"{path}, line 1, column 'label': required column is missing. Add a 'label' column."
    ]
    assert report.text.startswith(f"Manifest {path} cannot be read.\n1 problem(s):")


def test_show_writes_a_png(cohort_factory, tmp_path):
    cohort = load_cohort(cohort_factory(subjects=4).manifest, SMALL, workers=1)
    out = draw_examples(cohort, tmp_path / "figures" / "examples.png", n_per_class=2)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    unlabelled = load_cohort(
        cohort_factory(subjects=0, unlabelled=1, name="u").manifest, SMALL, workers=1
    )
    assert draw_examples(unlabelled, tmp_path / "unlabelled.png").exists()
