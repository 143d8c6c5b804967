"""Subject-grouped, stratified splits: a test set, k folds per seed, nested label fractions.

docs/protocol.md: a 30 % stratified test set, 5-fold stratified CV on the rest, label fractions of
10/20/40/60/80/100 % of each fold's training set. Two test modes:
- `fixed` (the paper's): one test set (a share `test`, or exactly `test_subjects` subjects) that
  every seed and fold shares; the folds deal the remaining subjects into validation parts.
- `rotating` (outer cross-validation, for cohorts too small to set a test set aside): per seed,
  all labelled subjects are dealt into `folds` parts; fold k tests on part k, validates on part
  k+1 (mod folds) and trains on the rest, so every labelled subject is tested exactly once per
  seed. Results are then cross-validated estimates, not a held-out claim. Unlike the reference code, every split here
is grouped by subject (a subject's two sinuses never straddle partitions), the label fractions
are nested (10 % lies inside 20 %) per fold and per seed, and there are several seeds.

Subjects are stratified on their label pattern: (number of labelled sinuses, number of
anomalous ones), e.g. "2 sinuses, 1 anomalous". Within a stratum subjects are shuffled, then
dealt out so that every part gets its stratum's share to within one subject:
- fixed test set: each stratum gives its share by largest remainder, drawn once from `test_seed`;
- folds (and rotating test parts): the shuffled strata, one after the other, are dealt
  round-robin to the folds;
- fractions: each fold's training subjects are put in one order in which every prefix is
  stratified (each step takes the stratum furthest behind its share); a fraction is a prefix.

The split file has the fixed columns `seed, fold, subject_id, partition, fraction`: one row per
(seed, fold, labelled subject); `fraction` (train rows only) is the smallest label fraction
whose training set includes the subject, so `fraction <= f` selects fraction f's subjects.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.errors import UserError
from benchmark.files import write_atomic

SPLIT_COLUMNS = ["seed", "fold", "subject_id", "partition", "fraction"]
PARTITIONS = ("test", "val", "train")
PAPER_FRACTIONS = (0.1, 0.2, 0.4, 0.6, 0.8, 1.0)
TEST_MODES = ("fixed", "rotating")
# Independent random streams for the three draws, so changing one never shifts another.
TEST_STREAM, FOLD_STREAM, FRACTION_STREAM = 0, 1, 2


class SplitError(UserError, ValueError):
    """Splits that cannot be made or read; the message says where and what to do."""


class LeakError(UserError, RuntimeError):
    """A test subject is in the pretraining pool."""


def make_splits(
    table: pd.DataFrame,
    test: float = 0.3,
    folds: int = 5,
    seeds: tuple[int, ...] = (0, 1, 2),
    fractions: tuple[float, ...] = PAPER_FRACTIONS,
    test_seed: int = 0,
    test_subjects: int | None = None,
    test_mode: str = "fixed",
) -> pd.DataFrame:
    """Make the split table for the labelled rows of `table` (a manifest table).

    `table` needs `subject_id` and `label` (rows without a label are ignored). `fractions` are
    sorted and 1.0 is added when missing, so that every training subject has a fraction.
    `test_mode="fixed"`: the test set has `test_subjects` subjects (or the share `test` when
    None) and depends on `test_seed` only: it is identical for every seed and fold, so one
    pretraining can exclude it once (docs/contracts.md, "Split file"). `test_mode="rotating"`:
    `test`, `test_subjects` and `test_seed` play no part (a profile's fixed-mode sizes need not
    be unset); see the module docstring.
    """
    fractions = _check_arguments(test, folds, seeds, fractions, test_subjects, test_mode)
    subjects = subject_labels(table)
    if test_mode == "rotating":
        return _rotating_splits(subjects, folds, seeds, fractions)
    count = _round_half_up(test * len(subjects)) if test_subjects is None else test_subjects
    if count >= len(subjects):
        asked = f"a test set of {count} subjects" if test_subjects else f"splits.test={test}"
        raise SplitError(
            f"{asked}: the manifest has only {len(subjects)} labelled subjects. Set "
            "splits.test_subjects (phantom.test_subjects on the phantom) to fewer test "
            "subjects, or use splits.test_mode=rotating."
        )
    share = test if test_subjects is None else test_subjects / len(subjects)
    rng = np.random.default_rng([test_seed, TEST_STREAM])
    test_ids = _draw_test_set(subjects, share, count, rng)
    if count > 0:
        _require_both_labels(subjects.loc[test_ids], "the test set", "Use a larger test set.")
    development = subjects.drop(index=test_ids)
    if len(development) < folds:
        raise SplitError(
            f"{len(development)} labelled subjects remain after the test set, too few for "
            f"{folds} folds. Use fewer folds, a smaller test set or more labelled subjects."
        )
    rows, problems = [], []
    for seed in seeds:
        fold_of = _deal_folds(development, folds, np.random.default_rng([seed, FOLD_STREAM]))
        for fold in range(folds):
            parts = {"test": subjects.loc[test_ids], "val": development[fold_of == fold]}
            training = development[fold_of != fold]
            rows += _fold_rows(seed, fold, parts, training, fractions, problems)
    return _split_table(rows, problems)


def _rotating_splits(
    subjects: pd.DataFrame, folds: int, seeds: tuple[int, ...], fractions: list[float]
) -> pd.DataFrame:
    """Outer cross-validation: fold k tests part k, validates part k+1 and trains the rest."""
    if folds < 3:
        raise SplitError(
            f"splits.test_mode=rotating needs splits.folds of at least 3 (a test, a validation "
            f"and a training part), not {folds}."
        )
    if len(subjects) < folds:
        raise SplitError(
            f"{len(subjects)} labelled subjects are too few for {folds} folds. Use fewer folds "
            "or more labelled subjects."
        )
    rows, problems = [], []
    for seed in seeds:
        part_of = _deal_folds(subjects, folds, np.random.default_rng([seed, FOLD_STREAM]))
        for fold in range(folds):
            validation_part = (fold + 1) % folds
            parts = {
                "test": subjects[part_of == fold],
                "val": subjects[part_of == validation_part],
            }
            training = subjects[(part_of != fold) & (part_of != validation_part)]
            rows += _fold_rows(seed, fold, parts, training, fractions, problems)
    return _split_table(rows, problems)


def _fold_rows(
    seed: int,
    fold: int,
    parts: dict[str, pd.DataFrame],
    training: pd.DataFrame,
    fractions: list[float],
    problems: list[str],
) -> list[tuple]:
    """The rows of one seed and fold; a problem is appended to `problems` instead."""
    where = f"seed {seed}, fold {fold}"
    order = _stratified_order(training, np.random.default_rng([seed, FRACTION_STREAM, fold]))
    try:
        for partition, members in parts.items():
            if partition == "val" or len(members):
                _require_both_labels(
                    members, f"the {_NAMES[partition]} of {where}", "Use fewer folds."
                )
        fraction_of = _smallest_fractions(training.loc[order], fractions, where)
    except SplitError as problem:
        problems.append(str(problem))
        return []
    rows = [
        (seed, fold, subject, partition, math.nan)
        for partition, members in parts.items()
        for subject in members.index
    ]
    return rows + [(seed, fold, s, "train", f) for s, f in zip(order, fraction_of)]


_NAMES = {"test": "test set", "val": "validation set"}


def _split_table(rows: list[tuple], problems: list[str]) -> pd.DataFrame:
    if problems:
        raise SplitError("\n".join(problems))
    splits = pd.DataFrame(rows, columns=SPLIT_COLUMNS)
    return splits.sort_values(["seed", "fold", "subject_id"], ignore_index=True)


def given_splits(
    table: pd.DataFrame,
    partition_of: dict[str, str],
    seeds: tuple[int, ...] = (0,),
    fractions: tuple[float, ...] = PAPER_FRACTIONS,
) -> pd.DataFrame:
    """The split table of a cohort that comes with its own train/val/test assignment.

    `partition_of` maps every labelled subject to `train`, `val` or `test` (e.g. MedMNIST's
    official split). The result has one fold (fold 0) per seed whose test and validation sets
    are the given ones; seeds vary only the nested, stratified label-fraction subsets of the
    given training set, drawn as `make_splits` draws them.
    """
    fractions = _check_arguments(0.0, 2, seeds, fractions, None, "fixed")
    subjects = subject_labels(table)
    unknown = sorted(set(subjects.index) - set(partition_of))
    bad = sorted({p for p in partition_of.values() if p not in PARTITIONS})
    if unknown or bad:
        raise SplitError(
            f"every labelled subject needs a partition in {PARTITIONS}: "
            f"{len(unknown)} have none (first: {unknown[:3]}), unknown partitions {bad}."
        )
    partition = subjects.index.map(partition_of)
    for name in ("test", "val"):
        _require_both_labels(
            subjects[partition == name], f"the given {name} set", "Check the source's labels."
        )
    training = subjects[partition == "train"]
    rows = []
    for seed in seeds:
        order = _stratified_order(training, np.random.default_rng([seed, FRACTION_STREAM, 0]))
        fraction_of = _smallest_fractions(training.loc[order], fractions, f"seed {seed}")
        rows += [
            (seed, 0, s, p, math.nan) for s, p in zip(subjects.index, partition) if p != "train"
        ]
        rows += [(seed, 0, s, "train", f) for s, f in zip(order, fraction_of)]
    splits = pd.DataFrame(rows, columns=SPLIT_COLUMNS)
    return splits.sort_values(["seed", "fold", "subject_id"], ignore_index=True)


def subject_labels(table: pd.DataFrame) -> pd.DataFrame:
    """Per labelled subject (index, sorted): `sinuses`, `anomalous` and the `stratum` name."""
    labelled = table[table["label"].notna()]
    if labelled.empty:
        raise SplitError(
            "the manifest has no labelled rows, so there is nothing to split. "
            "Give the labelled sinuses a label (0/1), or use this manifest for pretraining only."
        )
    subjects = labelled.groupby(labelled["subject_id"].astype(str)).agg(
        sinuses=("label", "size"), anomalous=("label", "sum")
    )
    subjects["anomalous"] = subjects["anomalous"].astype(int)
    subjects["stratum"] = [
        f"{sinuses} sinus{'es' if sinuses > 1 else ''}, {anomalous} anomalous"
        for sinuses, anomalous in zip(subjects["sinuses"], subjects["anomalous"])
    ]
    return subjects.sort_index()


def _check_arguments(test, folds, seeds, fractions, test_subjects, test_mode) -> list[float]:
    if test_mode not in TEST_MODES:
        raise SplitError(f"splits.test_mode must be fixed or rotating, not {test_mode!r}.")
    if not 0 <= test < 1:
        raise SplitError(f"the test share must be in [0, 1), not {test}.")
    if test_subjects is not None and (int(test_subjects) != test_subjects or test_subjects < 0):
        raise SplitError(
            f"splits.test_subjects must be null or a whole number of subjects, not {test_subjects}."
        )
    if int(folds) != folds or folds < 2:
        raise SplitError(f"folds must be an integer of at least 2, not {folds}.")
    if len(seeds) == 0 or len(set(seeds)) != len(seeds):
        raise SplitError(f"give one or more distinct seeds, not {seeds}.")
    bad = [fraction for fraction in fractions if not 0 < fraction <= 1]
    if bad:
        raise SplitError(f"label fractions must be in (0, 1]; got {bad}.")
    return sorted(set(fractions) | {1.0})


def _shuffled_strata(subjects: pd.DataFrame, rng: np.random.Generator) -> list[list[str]]:
    """The subject ids of every stratum (strata in sorted order), each list shuffled."""
    return [list(rng.permutation(group.index)) for _, group in subjects.groupby("stratum")]


def _draw_test_set(
    subjects: pd.DataFrame, share: float, count: int, rng: np.random.Generator
) -> list[str]:
    """`count` subjects (`share` of them), each stratum's share by largest remainder."""
    strata = _shuffled_strata(subjects, rng)
    quotas = np.array([share * len(stratum) for stratum in strata])
    counts = np.floor(quotas).astype(int)
    missing = count - counts.sum()
    counts[np.argsort(-(quotas - counts), kind="stable")[:missing]] += 1
    return sorted(subject for stratum, count in zip(strata, counts) for subject in stratum[:count])


def _deal_folds(subjects: pd.DataFrame, folds: int, rng: np.random.Generator) -> np.ndarray:
    """The fold of every subject (in `subjects` order): strata dealt round-robin."""
    dealt = [subject for stratum in _shuffled_strata(subjects, rng) for subject in stratum]
    fold_of = pd.Series(np.arange(len(dealt)) % folds, index=dealt)
    return fold_of.loc[subjects.index].to_numpy()


def _stratified_order(subjects: pd.DataFrame, rng: np.random.Generator) -> list[str]:
    """All subjects in one order whose every prefix holds each stratum's share within one.

    Each step takes a subject from the stratum furthest behind its share of the prefix (ties go
    to the stratum first in a random order), so label fractions can be prefixes: nested and
    stratified at once.
    """
    strata = _shuffled_strata(subjects, rng)
    strata = [strata[index] for index in rng.permutation(len(strata))]
    sizes = np.array([len(stratum) for stratum in strata])
    taken = np.zeros(len(strata), dtype=int)
    order = []
    for step in range(1, len(subjects) + 1):
        deficit = np.where(taken < sizes, step * sizes / len(subjects) - taken, -np.inf)
        chosen = int(np.argmax(deficit))
        order.append(strata[chosen][taken[chosen]])
        taken[chosen] += 1
    return order


def _smallest_fractions(ordered: pd.DataFrame, fractions: list[float], where: str) -> list[float]:
    """For subjects in training order, the smallest fraction whose prefix includes each.

    Raises a SplitError when a fraction's training set would lack either label.
    """
    anomalous = ordered["anomalous"].cumsum().to_numpy()
    normal = (ordered["sinuses"] - ordered["anomalous"]).cumsum().to_numpy()
    usable = np.flatnonzero((anomalous > 0) & (normal > 0))
    smallest = np.full(len(ordered), math.nan)
    for fraction in reversed(fractions):
        count = max(1, _round_half_up(fraction * len(ordered)))
        if not len(usable) or count <= usable[0]:
            need = (
                f" Fractions of at least {math.ceil(100 * (usable[0] + 1) / len(ordered)) / 100:g}"
                " work here."
                if len(usable)
                else ""
            )
            lacking = "anomalous" if anomalous[count - 1] == 0 else "normal"
            raise SplitError(
                f"{where}, fraction {fraction:g}: the training set would have {count} of "
                f"{len(ordered)} subjects and no {lacking} sinus.{need} Use a larger smallest "
                "fraction or more labelled subjects."
            )
        smallest[:count] = fraction
    return smallest.tolist()


def _require_both_labels(subjects: pd.DataFrame, what: str, fix: str) -> None:
    anomalous = int(subjects["anomalous"].sum())
    normal = int(subjects["sinuses"].sum()) - anomalous
    if anomalous == 0 or normal == 0:
        raise SplitError(
            f"{what} would have {len(subjects)} subjects with {normal} normal and {anomalous} "
            f"anomalous sinuses; both labels are needed. {fix}"
        )


def _round_half_up(value: float) -> int:
    return math.floor(value + 0.5)


def write_splits(splits: pd.DataFrame, path: str | Path) -> None:
    """Write the split table as CSV atomically (temp file + rename), after validating it."""
    path = Path(path)
    _validate(splits, path, lines=range(2, len(splits) + 2))
    write_atomic(path, splits[SPLIT_COLUMNS].to_csv(index=False, float_format="%.6g"))


def read_splits(path: str | Path) -> pd.DataFrame:
    """Read and validate a split file; problems name the file, the line and the column."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as stream:
            reader = csv.DictReader(stream)
            records = [(reader.line_num, row) for row in reader]
            columns = reader.fieldnames or []
    except OSError as error:
        raise SplitError(f"{path}: cannot be read ({error}).") from None
    missing = [name for name in SPLIT_COLUMNS if name not in columns]
    if missing:
        raise SplitError(f"{path}, line 1: missing column(s) {', '.join(missing)}.")
    problems, rows, lines = [], [], []
    for line, record in records:
        parsed = _parse_split_row(record)
        if isinstance(parsed, str):
            problems.append(f"{path}, line {line}, {parsed}")
        else:
            rows.append(parsed)
            lines.append(line)
    if problems:
        raise SplitError("\n".join(problems))
    splits = pd.DataFrame(rows, columns=SPLIT_COLUMNS)
    _validate(splits, path, lines)
    return splits


def _parse_split_row(record: dict) -> tuple | str:
    """(seed, fold, subject_id, partition, fraction), or a message naming the bad column."""
    try:
        seed, fold = int(record["seed"]), int(record["fold"])
    except (TypeError, ValueError):
        return f"columns 'seed'/'fold': {record['seed']!r}/{record['fold']!r} are not integers."
    subject, partition = (record["subject_id"] or "").strip(), record["partition"]
    if not subject:
        return "column 'subject_id': it is empty."
    try:
        fraction = float(record["fraction"]) if record["fraction"] else math.nan
    except ValueError:
        return f"column 'fraction': {record['fraction']!r} is not a number."
    return (seed, fold, subject, partition, fraction)


def _validate(splits: pd.DataFrame, path: Path, lines) -> None:
    """Check the rules of the split file; raise a SplitError naming every offending line."""
    lines = np.asarray(lines)
    problems = []

    def flag(mask, column: str, message: str) -> None:
        problems.extend(
            f"{path}, line {line}, column '{column}': {message}" for line in lines[mask]
        )

    train = (splits["partition"] == "train").to_numpy()
    fraction = splits["fraction"].to_numpy(dtype=float)
    flag(~splits["partition"].isin(PARTITIONS).to_numpy(), "partition", "not test, val or train.")
    flag((splits["fold"] < 0).to_numpy(), "fold", "folds count from 0.")
    flag(train & ~((fraction > 0) & (fraction <= 1)), "fraction", "train rows need one in (0, 1].")
    flag(~train & ~np.isnan(fraction), "fraction", "only train rows have a fraction.")
    repeated = splits.duplicated(["seed", "fold", "subject_id"]).to_numpy()
    flag(repeated, "subject_id", "the subject is listed twice for this seed and fold.")
    if problems:
        raise SplitError("\n".join(problems))
    groups = splits.groupby(["seed", "fold"])
    subject_sets = {key: frozenset(group["subject_id"]) for key, group in groups}
    if len(set(subject_sets.values())) > 1:
        raise SplitError(
            f"{path}: the subjects differ between (seed, fold) pairs {sorted(subject_sets)}; "
            "every seed and fold must list the same subjects. Remake the splits with "
            "make_splits."
        )
    if _test_mode_or_none(splits) is None:
        raise SplitError(
            f"{path}: the test subjects fit neither test mode: a fixed test set is the same "
            "for every seed and fold, and rotating test parts give every subject the test "
            "partition in exactly one fold of each seed. Remake the splits with make_splits."
        )


def split_test_mode(splits: pd.DataFrame) -> str:
    """``fixed`` (one test set for every seed and fold) or ``rotating`` (outer folds)."""
    mode = _test_mode_or_none(splits)
    if mode is None:
        raise SplitError("the split table fits neither test mode; remake it with make_splits.")
    return mode


def _test_mode_or_none(splits: pd.DataFrame) -> str | None:
    test = splits[splits["partition"] == "test"]
    pairs = set(zip(splits["seed"], splits["fold"]))
    test_sets = {pair: frozenset() for pair in pairs}
    test_sets.update(
        {key: frozenset(group) for key, group in test.groupby(["seed", "fold"])["subject_id"]}
    )
    if len(set(test_sets.values())) == 1:
        return "fixed"
    subjects = splits["subject_id"].nunique()
    seeds = sorted(set(splits["seed"]))
    tested = test.groupby("seed")["subject_id"]
    once = tested.nunique().reindex(seeds).eq(subjects) & tested.size().reindex(seeds).eq(subjects)
    return "rotating" if once.all() else None


def _select(splits: pd.DataFrame, seed: int, fold: int) -> pd.DataFrame:
    chosen = splits[(splits["seed"] == seed) & (splits["fold"] == fold)]
    if chosen.empty:
        pairs = sorted(set(zip(splits["seed"], splits["fold"])))
        raise SplitError(f"no split for seed {seed}, fold {fold}; the splits have {pairs}.")
    return chosen


def partition_subjects(splits: pd.DataFrame, seed: int, fold: int, partition: str) -> list[str]:
    """The subject ids of one partition (`test`, `val` or `train`) of one seed and fold."""
    if partition not in PARTITIONS:
        raise SplitError(f"partition must be one of {PARTITIONS}, not {partition!r}.")
    chosen = _select(splits, seed, fold)
    return sorted(chosen.loc[chosen["partition"] == partition, "subject_id"])


def training_subjects(splits: pd.DataFrame, seed: int, fold: int, fraction: float) -> list[str]:
    """The training subjects of label fraction `fraction` (one of the split's fractions)."""
    train = _select(splits, seed, fold)
    train = train[train["partition"] == "train"]
    available = sorted(train["fraction"].unique())
    if not np.isclose(available, fraction).any():
        raise SplitError(f"fraction {fraction:g} is not in the splits; they have {available}.")
    return sorted(train.loc[train["fraction"] <= fraction + 1e-9, "subject_id"])


def check_pretraining_pool(splits: pd.DataFrame, pretraining_subject_ids) -> None:
    """Refuse a pretraining pool that contains any test subject (docs/design.md, "Splits").

    Pretraining on test subjects would let the encoder see test data; the harness calls this
    before every pretraining. Raises a LeakError naming the offending subjects.
    """
    test = set(splits.loc[splits["partition"] == "test", "subject_id"])
    leaked = sorted(test & {str(subject) for subject in pretraining_subject_ids})
    if leaked:
        shown = ", ".join(leaked[:20]) + (
            f" and {len(leaked) - 20} more" if len(leaked) > 20 else ""
        )
        raise LeakError(
            f"{len(leaked)} test subject(s) are in the pretraining pool: {shown}. Remove them "
            "from the pretraining manifest (or drop the test subjects before pretraining)."
        )
