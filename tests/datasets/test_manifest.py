"""read_manifest: normalised table, and a precise message for every bad input."""

import pytest
from benchmark.datasets.manifest import ManifestError, read_manifest
from conftest import write_manifest


def rewrite(cohort, changes: dict[int, dict]) -> list[dict]:
    """The cohort's rows with `changes[i]` applied to row i (CSV line i + 2)."""
    rows = [dict(row) for row in cohort.rows]
    for index, change in changes.items():
        rows[index].update(change)
    write_manifest(cohort.manifest, rows)
    return rows


def single_problem(manifest) -> str:
    with pytest.raises(ManifestError) as caught:
        read_manifest(manifest)
    assert len(caught.value.problems) == 1, caught.value
    return str(caught.value.problems[0])


def test_table_is_normalised(cohort_factory):
    cohort = cohort_factory(subjects=2, unlabelled=1)
    manifest = read_manifest(cohort.manifest)
    table = manifest.table
    assert len(table) == 6 and manifest.excluded == []
    assert table["row"].tolist() == [2, 3, 4, 5, 6, 7]
    assert str(table["label"].dtype) == "Int64"
    assert table["label"].isna().tolist() == [False] * 4 + [True] * 2
    assert table["image"][0] == str(cohort.manifest.parent / "images" / "sub000.nii.gz")
    assert table["mask"][5] == ""
    assert table["centroid_x"].tolist() == [6.0, 17.0] * 3
    assert len(manifest.labelled) == 4 and manifest.has_masks


def test_accepts_spelled_out_values(cohort_factory):
    cohort = cohort_factory(subjects=2, masks=False)
    rewrite(
        cohort,
        {
            0: {"label": "Normal", "side": "left"},
            1: {"label": "1.0", "side": "RIGHT", "pathology": " Polyp ; mucosal_thickening;"},
            2: {"label": " ANOMALOUS ", "pathology": "polyp;polyp"},
        },
    )
    table = read_manifest(cohort.manifest).table
    assert table["label"].tolist()[:3] == [0, 1, 1]
    assert table["side"].tolist()[:2] == ["L", "R"]
    assert table["pathology"].tolist()[1:3] == ["mucosal_thickening;polyp", "polyp"]


def test_optional_columns_may_be_absent(tmp_path, cohort_factory):
    cohort = cohort_factory(subjects=1)
    rows = [{"subject_id": "a", "image": cohort.rows[0]["image"], "label": ""}]
    table = read_manifest(write_manifest(cohort.manifest, rows)).table
    assert table["side"].tolist() == [""] and table["mask"].tolist() == [""]
    assert table["centroid_x"].isna().all()


@pytest.mark.parametrize(
    "change, column, expected",
    [
        ({"label": "2"}, "label", "unknown label '2'. Use 0 or 'normal'"),
        ({"side": "middle"}, "side", "unknown side 'middle'. Use L or R"),
        ({"subject_id": ""}, "subject_id", "subject_id is empty"),
        ({"image": "images/nope.nii.gz"}, "image", "nope.nii.gz' does not exist"),
        ({"image": "images/sub000.png"}, "image", "is not a NIfTI file name. Use a .nii"),
        ({"mask": "masks/nope.nii"}, "mask", "nope.nii' does not exist"),
        ({"centroid_y": "", "centroid_z": ""}, "centroid_y", "centroid_y is empty but centroid_x"),
        ({"centroid_z": "ten"}, "centroid_z", "'ten' is not a number"),
        ({"pathology": "polyp"}, "pathology", "label 0 (normal) but pathology 'polyp'"),
    ],
)
def test_bad_value_names_file_line_and_column(cohort_factory, change, column, expected):
    cohort = cohort_factory(subjects=2)
    rewrite(cohort, {3: change})  # sub001 R, normal, CSV line 5
    with pytest.raises(ManifestError) as caught:
        read_manifest(cohort.manifest)
    message = str(caught.value.problems[0])
    assert message.startswith(f"{cohort.manifest}, line 5, column '{column}': ")
    assert expected in message


def test_row_with_wrong_field_count(cohort_factory):
    cohort = cohort_factory(subjects=1)
    with open(cohort.manifest, "a") as stream:
        stream.write("sub009,images/sub000.nii.gz\n")
    message = single_problem(cohort.manifest)
    assert "line 4:" in message and "the row has 2 fields but the header has 9" in message


def test_missing_required_columns(cohort_factory):
    cohort = cohort_factory(subjects=1)
    rows = [{key: value for key, value in cohort.rows[0].items() if key not in ("label", "image")}]
    write_manifest(cohort.manifest, rows)
    with pytest.raises(ManifestError) as caught:
        read_manifest(cohort.manifest, on_bad_rows="exclude")
    messages = [str(problem) for problem in caught.value.problems]
    assert messages == [
        f"{cohort.manifest}, line 1, column '{name}': required column is missing. "
        f"Add a '{name}' column."
        for name in ("image", "label")
    ]


def test_reserved_column_name(cohort_factory):
    cohort = cohort_factory(subjects=1)
    write_manifest(cohort.manifest, [{**row, "row": "1"} for row in cohort.rows])
    with pytest.raises(ManifestError, match="line 1, column 'row': the name is reserved"):
        read_manifest(cohort.manifest)


def test_missing_manifest(tmp_path):
    with pytest.raises(ManifestError, match="the manifest does not exist"):
        read_manifest(tmp_path / "absent.csv")


def test_duplicates_and_conflicts(cohort_factory):
    cohort = cohort_factory(subjects=3, masks=False)
    rows = cohort.rows
    rows.append(dict(rows[0]))  # line 8: same sinus, same label
    rows.append({**rows[2], "label": "0", "pathology": ""})  # line 9: sub001 L was 1
    rows.append({**rows[5], "subject_id": "other"})  # line 10: sub002 R's image and centroid
    write_manifest(cohort.manifest, rows)
    with pytest.raises(ManifestError) as caught:
        read_manifest(cohort.manifest)
    messages = [str(problem) for problem in caught.value.problems]
    assert len(messages) == 4
    assert "line 4, column 'label': conflicting labels for subject 'sub001' side L: " in messages[0]
    assert "1 on line 4, 0 on line 9" in messages[0]
    assert (
        "line 8, column 'subject_id': subject 'sub000' side L is listed again (first on line 2)"
        in messages[1]
    )
    assert "line 9, column 'label': conflicting labels" in messages[2]
    assert "line 10, column 'image': the same image and centroid as line 7" in messages[3]


def test_exclusion_lists_every_excluded_row(cohort_factory):
    cohort = cohort_factory(subjects=3, masks=False)
    rows = rewrite(cohort, {1: {"side": "up"}, 4: {"label": "maybe", "image": "x.nii"}})
    rows.append(dict(rows[0]))
    write_manifest(cohort.manifest, rows)
    manifest = read_manifest(cohort.manifest, on_bad_rows="exclude")
    assert [(problem.row, problem.column) for problem in manifest.excluded] == [
        (3, "side"),
        (6, "image"),
        (6, "label"),
        (8, "subject_id"),
    ]
    assert manifest.table["row"].tolist() == [2, 4, 5, 7]
    assert manifest.on_bad_rows == "exclude"
