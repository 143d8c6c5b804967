"""The cohort manifest: a CSV with one row per volume, read and validated row by row.

The manifest is the one place where a user describes their cohort (docs/design.md, "Data manifest").
`read_manifest` performs every check that needs only the CSV and the file system (columns,
values, duplicates, conflicting labels, files that do not exist); checks that need a volume's
content (dimensions, finiteness, crop inside the volume) happen when the volume is loaded
(`volumes.load_volume`, `cohort.load_cohort`, `run_checks.check_run_data`). Every problem is a
`Problem` that names the manifest, the CSV line, the column and what to do about it, and all
problems are reported together, never only the first.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from benchmark.errors import UserError

REQUIRED_COLUMNS = ("subject_id", "image", "label")
CENTROID_COLUMNS = ("centroid_x", "centroid_y", "centroid_z")
OPTIONAL_COLUMNS = ("side", "pathology", *CENTROID_COLUMNS, "mask")
NIFTI_SUFFIXES = (".nii", ".nii.gz")

LABEL_WORDS = {"0": 0, "1": 1, "normal": 0, "anomalous": 1}
SIDE_WORDS = {"l": "L", "left": "L", "r": "R", "right": "R"}
BAD_ROW_POLICIES = ("error", "exclude")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a manifest: where it is and what to do about it.

    `row` is the 1-based line of the CSV (the header is line 1), `None` for problems of the
    whole file; `column` is `None` when no single column is at fault.
    """

    manifest: Path
    row: int | None
    column: str | None
    message: str
    fix: str

    def __str__(self) -> str:
        place = str(self.manifest)
        if self.row is not None:
            place += f", line {self.row}"
        if self.column is not None:
            place += f", column '{self.column}'"
        return f"{place}: {self.message}. {self.fix}"


class ManifestError(UserError, ValueError):
    """A manifest (or a file it lists) that cannot be used; `problems` lists every problem."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        count = f"{len(self.problems)} problem" + ("s" if len(self.problems) != 1 else "")
        super().__init__(f"{count}:\n" + "\n".join(f"- {problem}" for problem in self.problems))


@dataclass
class Manifest:
    """A validated manifest.

    `table` has one row per kept volume with the columns `row` (CSV line), `subject_id`, `side`
    (`L`, `R` or ``), `label` (pandas `Int64`, `<NA>` = unlabelled), `pathology` (canonical
    `;`-joined findings), `image` and `mask` (absolute paths, `mask` `` when absent),
    `centroid_x/y/z` (float, NaN when absent) and any further columns of the CSV as text.
    `excluded` lists the problems of every row left out (with `on_bad_rows="exclude"`).
    """

    path: Path
    table: pd.DataFrame
    excluded: list[Problem] = field(default_factory=list)
    on_bad_rows: str = "error"

    @property
    def labelled(self) -> pd.DataFrame:
        """The rows that carry a label (the input of `splits.make_splits`)."""
        return self.table[self.table["label"].notna()]

    @property
    def has_masks(self) -> bool:
        return bool((self.table["mask"] != "").any())


def read_manifest(path: str | Path, on_bad_rows: str = "error") -> Manifest:
    """Read and validate a cohort manifest.

    With `on_bad_rows="error"` any problem raises a `ManifestError` listing all of them; with
    `"exclude"` the rows at fault are left out and listed in `Manifest.excluded`. Problems of
    the whole file (unreadable, required columns missing, a column named `row`) always raise. Of duplicated rows the
    first is kept and the others are excluded; rows that give one sinus conflicting labels are
    all excluded, since there is no telling which one is right.
    """
    if on_bad_rows not in BAD_ROW_POLICIES:
        raise ValueError(f"on_bad_rows must be one of {BAD_ROW_POLICIES}, not {on_bad_rows!r}")
    path = Path(path).absolute()
    header, lines = _read_csv(path)
    records, problems = [], []
    for line, values in lines:
        record, row_problems = _parse_row(path, header, line, values)
        problems += row_problems
        if not row_problems:
            records.append(record)
    duplicate_problems = _find_duplicates(path, records)
    problems += duplicate_problems
    if problems and on_bad_rows == "error":
        raise ManifestError(sorted(problems, key=_problem_order))
    bad_rows = {problem.row for problem in duplicate_problems}
    kept = [record for record in records if record["row"] not in bad_rows]
    extra_columns = [
        name for name in header if name and name not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS
    ]
    return Manifest(
        path=path,
        table=_to_table(kept, extra_columns),
        excluded=sorted(problems, key=_problem_order),
        on_bad_rows=on_bad_rows,
    )


def _problem_order(problem: Problem) -> tuple[int, str]:
    return (problem.row or 0, problem.column or "")


def _read_csv(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The stripped header and the (CSV line, values) of every non-blank data row."""

    def whole_file_problem(message: str, fix: str) -> ManifestError:
        return ManifestError([Problem(path, None, None, message, fix)])

    try:
        with open(path, newline="", encoding="utf-8-sig") as stream:
            reader = csv.reader(stream)
            rows = [(reader.line_num, values) for values in reader]
    except FileNotFoundError:
        raise whole_file_problem("the manifest does not exist", "Check the path.") from None
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise whole_file_problem(
            f"cannot be read as a UTF-8 CSV file ({error})", "Save it as UTF-8 CSV."
        ) from None
    rows = [(line, values) for line, values in rows if any(value.strip() for value in values)]
    if not rows:
        raise whole_file_problem(
            "the manifest is empty", "Add a header line and one row per volume."
        )
    header = [name.strip() for name in rows[0][1]]
    missing = [name for name in REQUIRED_COLUMNS if name not in header]
    problems = [
        Problem(path, 1, name, "required column is missing", f"Add a '{name}' column.")
        for name in missing
    ]
    partial = [name for name in CENTROID_COLUMNS if name not in header]
    if len(partial) < len(CENTROID_COLUMNS) and partial:
        problems += [
            Problem(path, 1, name, "only some centroid columns exist", "Add all three or none.")
            for name in partial
        ]
    if "row" in header:
        problems.append(
            Problem(path, 1, "row", "the name is reserved for the CSV line", "Rename the column.")
        )
    repeated = sorted({name for name in header if header.count(name) > 1})
    problems += [
        Problem(path, 1, name, "column appears more than once", "Keep one.") for name in repeated
    ]
    if problems:
        raise ManifestError(problems)
    return header, rows[1:]


def _parse_row(path: Path, header: list[str], line: int, values: list[str]):
    """Normalise one CSV row; return (record, problems)."""
    problems = []

    def problem(column: str | None, message: str, fix: str) -> None:
        problems.append(Problem(path, line, column, message, fix))

    if len(values) != len(header):
        problem(
            None,
            f"the row has {len(values)} fields but the header has {len(header)}",
            "Check for a missing or extra comma (quote values that contain commas).",
        )
        return None, problems
    raw = {name: value.strip() for name, value in zip(header, values)}
    record = {"row": line, **raw}

    if not raw["subject_id"]:
        problem("subject_id", "subject_id is empty", "Give every row its subject's id.")

    record["image"] = _resolve_file(path, raw["image"], "image", problem, required=True)
    record["mask"] = _resolve_file(path, raw.get("mask", ""), "mask", problem, required=False)

    label_word = raw["label"].lower()
    record["label"] = _parse_label(label_word)
    if label_word and record["label"] is None:
        problem(
            "label",
            f"unknown label {raw['label']!r}",
            "Use 0 or 'normal', 1 or 'anomalous', or leave it empty for an unlabelled volume.",
        )

    side_word = raw.get("side", "").lower()
    record["side"] = SIDE_WORDS.get(side_word, "")
    if side_word and side_word not in SIDE_WORDS:
        problem("side", f"unknown side {raw['side']!r}", "Use L or R (or left/right).")

    findings = [word.strip().lower() for word in raw.get("pathology", "").split(";")]
    record["pathology"] = ";".join(sorted({word for word in findings if word}))
    if record["label"] == 0 and record["pathology"]:
        problem(
            "pathology",
            f"label 0 (normal) but pathology {record['pathology']!r}",
            "Either the label is 1 (anomalous) or the pathology must be empty.",
        )

    given = [name for name in CENTROID_COLUMNS if raw.get(name, "")]
    for name in CENTROID_COLUMNS:
        record[name] = math.nan
        if given and name not in given:
            problem(
                name,
                f"{name} is empty but {', '.join(given)} is given",
                "Give all three centroid coordinates or none.",
            )
        elif name in given:
            try:
                record[name] = float(raw[name])
            except ValueError:
                record[name] = math.nan
            if not math.isfinite(record[name]):
                problem(name, f"{raw[name]!r} is not a number", "Give a voxel index.")
    return record, problems


def _parse_label(word: str) -> int | None:
    """0/1 from '0', '1', 'normal', 'anomalous' (any case) or '0.0'/'1.0'; None otherwise."""
    if word in LABEL_WORDS:
        return LABEL_WORDS[word]
    try:
        number = float(word)
    except ValueError:
        return None
    return int(number) if number in (0.0, 1.0) else None


def _resolve_file(path: Path, value: str, column: str, problem, required: bool) -> str:
    """The absolute path of a file named relative to the manifest; '' when not given."""
    if not value:
        if required:
            problem(column, f"{column} is empty", "Give the NIfTI file, relative to the manifest.")
        return ""
    file = (path.parent / value).absolute()
    if not value.lower().endswith(NIFTI_SUFFIXES):
        problem(column, f"{value!r} is not a NIfTI file name", "Use a .nii or .nii.gz file.")
    elif not file.is_file():
        problem(
            column,
            f"file {str(file)!r} does not exist",
            "Paths are relative to the manifest's folder; check the name.",
        )
    return str(file)


def _find_duplicates(path: Path, records: list[dict]) -> list[Problem]:
    """Problems for rows that repeat a sinus (subject+side) or a volume (image+centroid)."""
    problems = []
    first_of_sinus: dict[tuple, dict] = {}
    first_of_volume: dict[tuple, dict] = {}
    conflicting_sinuses: dict[tuple, list[dict]] = {}
    for record in records:
        sinus = (record["subject_id"], record["side"])
        volume = (record["image"], *(_centroid_or_none(record) or ()))
        if sinus in first_of_sinus:
            first = first_of_sinus[sinus]
            if first["label"] != record["label"]:
                conflicting_sinuses.setdefault(sinus, [first]).append(record)
            else:
                side = f" side {record['side']}" if record["side"] else ""
                problems.append(
                    Problem(
                        path,
                        record["row"],
                        "subject_id",
                        f"subject {record['subject_id']!r}{side} is listed again "
                        f"(first on line {first['row']})",
                        "Remove the duplicate row, or give the two sinuses their sides.",
                    )
                )
        elif volume in first_of_volume:
            first = first_of_volume[volume]
            problems.append(
                Problem(
                    path,
                    record["row"],
                    "image",
                    f"the same image and centroid as line {first['row']}",
                    "Remove the duplicate row, or correct its image or centroid.",
                )
            )
        first_of_sinus.setdefault(sinus, record)
        first_of_volume.setdefault(volume, record)
    for (subject, side), group in conflicting_sinuses.items():
        labels = ", ".join(f"{_label_text(r['label'])} on line {r['row']}" for r in group)
        sinus = f"subject {subject!r}" + (f" side {side}" if side else "")
        problems += [
            Problem(
                path,
                record["row"],
                "label",
                f"conflicting labels for {sinus}: {labels}",
                "Keep one row per sinus with the right label.",
            )
            for record in group
        ]
    return problems


def _centroid_or_none(record: dict) -> tuple[float, float, float] | None:
    centroid = tuple(record[name] for name in CENTROID_COLUMNS)
    return None if math.isnan(centroid[0]) else centroid


def _label_text(label: int | None) -> str:
    return "empty" if label is None else str(label)


def _to_table(records: list[dict], extra_columns: list[str]) -> pd.DataFrame:
    columns = ["row", "subject_id", "side", "label", "pathology", "image", "mask"]
    columns += [*CENTROID_COLUMNS, *extra_columns]
    table = pd.DataFrame.from_records(records, columns=columns)
    table["row"] = table["row"].astype("int64")
    table["label"] = table["label"].astype("Int64")
    table[list(CENTROID_COLUMNS)] = table[list(CENTROID_COLUMNS)].astype("float64")
    return table.reset_index(drop=True)
