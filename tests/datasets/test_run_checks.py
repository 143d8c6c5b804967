"""`ssl3d data check` and `ssl3d run` agree: the same hostile cohorts refused by both (or
accepted by both), every problem reported, no cache left behind (datasets/run_checks.py)."""

import nibabel as nib
import numpy as np
import pytest
from benchmark.datasets.manifest import read_manifest
from benchmark.datasets.splits import LeakError, make_splits
from conftest import write_manifest, write_nifti

from benchmark.cli import main
from benchmark.config import load_config
from benchmark.rundata import check_data, stage_data

# The smoke profile's splits (2 folds, 1 seed) on the 24x16x16 test heads with a 9-voxel crop.
SETTINGS = ["data.size=8", "data.crop=9", "data.workers=1"]


def a_test_subject(manifest) -> str:
    """A subject of the fixed test set the smoke profile's splits give `manifest`."""
    cfg = load_config("smoke", SETTINGS)
    table = read_manifest(manifest).table
    splits = make_splits(
        table[table["label"].notna()],
        test=float(cfg.splits.test),
        folds=int(cfg.splits.folds),
        seeds=tuple(cfg.splits.seeds),
        fractions=tuple(cfg.splits.fractions),
    )
    return splits.loc[splits["partition"] == "test", "subject_id"].iloc[0]


def one_class(rows, root):
    return [dict(row, label="0", pathology="", mask="") for row in rows]


def header_only(rows, root):
    return []


def normal_row_with_mask(rows, root):
    rows = [dict(row) for row in rows]
    normal, anomalous = rows[0], next(row for row in rows if row["label"] == "1")
    normal["mask"] = anomalous["mask"]  # sub000 L is normal; sub001's mask marks a lesion there
    return rows


def ids_differ_in_case(rows, root):
    names = {"sub001": "P0002", "sub002": "p0002"}
    return [dict(row, subject_id=names.get(row["subject_id"], row["subject_id"])) for row in rows]


def copied_test_image_in_pool(rows, root):
    subject = a_test_subject(root / "manifest.csv")
    original = next(row for row in rows if row["subject_id"] == subject)
    copy = np.asarray(nib.load(root / original["image"]).dataobj)
    write_nifti(root / "images" / "someone_else.nii.gz", copy)
    pooled = dict(original, subject_id="someone_else", image="images/someone_else.nii.gz")
    return rows + [dict(pooled, label="", pathology="", mask="", side="")]


def tiny_volume(rows, root, side=2):
    volume = np.random.default_rng(0).random((side, side, side))
    write_nifti(root / "images" / "tiny.nii.gz", volume)
    tiny = {"subject_id": "tiny", "image": "images/tiny.nii.gz", "label": ""}
    return rows + [tiny]


HOSTILE = [
    (one_class, "the test set would have"),
    (header_only, "no labelled rows"),
    (normal_row_with_mask, "line 2, column 'mask': label 0 (normal) but its mask marks"),
    (ids_differ_in_case, "subject 'P0002' differs only in case from 'p0002' on line"),
    (copied_test_image_in_pool, "has the same voxel data as line 34"),
    (tiny_volume, "the sample is 2x2x2 voxels, under a quarter of the 9-voxel crop"),
]


def hostile_cohort(cohort_factory, change):
    cohort = cohort_factory(subjects=12, unlabelled=4)
    root = cohort.manifest.parent
    rows = change([dict(row) for row in cohort.rows], root)
    if rows:
        write_manifest(cohort.manifest, rows)
    else:
        cohort.manifest.write_text(",".join(cohort.rows[0]) + "\n")
    return cohort.manifest


def data_check(manifest, *settings) -> int:
    """`ssl3d data check` on the smoke profile; its exit code."""
    try:
        main(["data", "check", str(manifest), "--profile", "smoke", *SETTINGS, *settings])
    except SystemExit as status:
        return status.code
    return 0


@pytest.mark.parametrize(("change", "fragment"), HOSTILE)
def test_check_and_run_refuse_the_same_hostile_cohorts(
    cohort_factory, tmp_path, capsys, change, fragment
):
    manifest = hostile_cohort(cohort_factory, change)
    code = data_check(manifest)
    checked = capsys.readouterr()
    assert code == 1, checked.out
    assert fragment in checked.out and fragment in checked.err
    assert not (manifest.parent / ".ssl3d_cache").exists()

    out = tmp_path / "out"
    command = ["run", "--profile", "smoke", "--methods", "scratch", "--out", str(out)]
    with pytest.raises(SystemExit) as status:
        main([*command, "--data", str(manifest), *SETTINGS])
    refused = capsys.readouterr().err
    assert status.value.code == 2 and "Traceback" not in refused
    assert fragment in refused
    assert not (out / "data" / "splits.csv").exists()


@pytest.mark.parametrize(
    ("change", "settings", "note"),
    [
        (lambda rows, root: rows, [], None),
        (
            tiny_volume,
            ["data.allow_small_volumes=true"],
            "1 volume(s) are smaller than the 9-voxel crop",
        ),
        (
            lambda rows, root: tiny_volume(rows, root, side=3),
            [],
            "(upsampled): line 34 (3x3x3)",
        ),
        (normal_row_with_mask, ["data.on_bad_rows=exclude"], "excluded: "),
    ],
)
def test_check_and_run_accept_the_same_cohorts(
    cohort_factory, tmp_path, capsys, change, settings, note
):
    manifest = hostile_cohort(cohort_factory, change)
    code = data_check(manifest, *settings)
    checked = capsys.readouterr().out
    assert code == 0, checked
    assert "No problems found." in checked
    assert note is None or note in checked
    logged = []
    cfg = load_config("smoke", [f"data.manifest={manifest}", *SETTINGS, *settings])
    pending = stage_data(cfg, tmp_path / "out", logged.append)
    assert note is None or any(note in line for line in logged)
    assert len(pending.data.splits) > 0


def test_every_problem_is_reported_at_once(cohort_factory, capsys):
    manifest = hostile_cohort(
        cohort_factory, lambda rows, root: tiny_volume(ids_differ_in_case(rows, root), root)
    )
    rows = read_manifest(manifest).table
    assert len(rows) == 33
    code = data_check(manifest)
    problems = [line for line in capsys.readouterr().err.splitlines() if line.startswith("problem")]
    assert code == 1
    assert len(problems) == 5  # 4 rows of P0002/p0002, the tiny volume
    assert sum("differs only in case" in line for line in problems) == 4


def test_a_leak_by_content_is_a_leak_error_naming_both_rows(cohort_factory):
    manifest = hostile_cohort(cohort_factory, copied_test_image_in_pool)
    subject = a_test_subject(manifest)
    cfg = load_config("smoke", SETTINGS)
    check = check_data(cfg, manifest)
    # The copied head holds both of the test subject's sinuses: both rows leaked.
    assert len(check.leaks) == 2
    for leak in check.leaks:
        assert f"(test subject {subject!r}) has the same voxel data as line 34" in leak
        assert "(subject 'someone_else', an unlabelled (pretraining) row" in leak
    with pytest.raises(LeakError, match="same voxel data"):
        check.refuse()


def test_the_check_keeps_its_cache_only_when_asked(cohort_factory):
    manifest = hostile_cohort(cohort_factory, lambda rows, root: rows)
    main(["data", "check", str(manifest), "--profile", "smoke", *SETTINGS, "--keep-cache"])
    assert len(list((manifest.parent / ".ssl3d_cache").iterdir())) == 1
