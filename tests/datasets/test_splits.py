"""make_splits and the split file: grouping, stratification, nesting, fixed test set, errors."""

import numpy as np
import pandas as pd
import pytest
from benchmark.datasets.splits import (
    LeakError,
    SplitError,
    check_pretraining_pool,
    make_splits,
    partition_subjects,
    read_splits,
    split_test_mode,
    subject_labels,
    training_subjects,
    write_splits,
)

# (sinuses, anomalous) -> number of subjects with that label pattern
PATTERNS = {(2, 0): 23, (2, 1): 17, (2, 2): 11, (1, 0): 6, (1, 1): 5}
SEEDS, FOLDS, FRACTIONS = (0, 1), 4, (0.1, 0.2, 0.4, 1.0)


def labelled_table(patterns=PATTERNS) -> pd.DataFrame:
    """A manifest-like table: one row per sinus, subjects covering the given label patterns."""
    rows, number = [], 0
    for (sinuses, anomalous), count in patterns.items():
        for _ in range(count):
            for side, label in zip("LR"[:sinuses], [1] * anomalous + [0] * (sinuses - anomalous)):
                rows.append({"subject_id": f"s{number:03d}", "side": side, "label": label})
            number += 1
    rows.append({"subject_id": "unlabelled", "side": "L", "label": pd.NA})
    return pd.DataFrame(rows).astype({"label": "Int64"})


@pytest.fixture(scope="module")
def splits():
    return make_splits(labelled_table(), folds=FOLDS, seeds=SEEDS, fractions=FRACTIONS)


def assert_stratified(chosen: list[str], population: list[str], share: float) -> None:
    """Each stratum of `population` gives `share` of its subjects to `chosen`, within one."""
    strata = subject_labels(labelled_table())["stratum"]
    for stratum, members in strata.loc[population].groupby(strata.loc[population]):
        taken = members.index.isin(chosen).sum()
        assert abs(taken - share * len(members)) <= 1 + 1e-9, (stratum, taken, len(members))


def test_columns_and_one_row_per_subject_seed_and_fold(splits):
    assert list(splits.columns) == ["seed", "fold", "subject_id", "partition", "fraction"]
    subjects = sum(PATTERNS.values())
    assert len(splits) == len(SEEDS) * FOLDS * subjects
    assert not splits.duplicated(["seed", "fold", "subject_id"]).any()
    assert "unlabelled" not in set(splits["subject_id"])
    assert splits.loc[splits["partition"] != "train", "fraction"].isna().all()


def test_fixed_stratified_test_set(splits):
    test = partition_subjects(splits, 0, 0, "test")
    assert len(test) == round(0.3 * sum(PATTERNS.values()))
    for seed in SEEDS:
        for fold in range(FOLDS):
            assert partition_subjects(splits, seed, fold, "test") == test
    assert_stratified(test, list(subject_labels(labelled_table()).index), 0.3)
    other_seeds = make_splits(labelled_table(), folds=FOLDS, seeds=(7,), fractions=FRACTIONS)
    assert partition_subjects(other_seeds, 7, 0, "test") == test
    other_draw = make_splits(labelled_table(), folds=FOLDS, seeds=(0,), test_seed=1)
    assert partition_subjects(other_draw, 0, 0, "test") != test


def test_folds_partition_the_rest_and_are_stratified(splits):
    test = partition_subjects(splits, 0, 0, "test")
    development = sorted(set(splits["subject_id"]) - set(test))
    for seed in SEEDS:
        validation = [partition_subjects(splits, seed, fold, "val") for fold in range(FOLDS)]
        assert sorted(subject for chosen in validation for subject in chosen) == development
        for fold, chosen in enumerate(validation):
            assert_stratified(chosen, development, 1 / FOLDS)
            train = partition_subjects(splits, seed, fold, "train")
            assert sorted(train + chosen) == development
    assert partition_subjects(splits, 0, 0, "val") != partition_subjects(splits, 1, 0, "val")


def test_fractions_are_nested_stratified_and_complete(splits):
    for seed in SEEDS:
        for fold in range(FOLDS):
            train = partition_subjects(splits, seed, fold, "train")
            previous = set()
            for fraction in FRACTIONS:
                chosen = training_subjects(splits, seed, fold, fraction)
                assert previous <= set(chosen)
                assert len(chosen) == int(np.floor(fraction * len(train) + 0.5))
                assert_stratified(chosen, train, len(chosen) / len(train))
                previous = set(chosen)
            assert sorted(previous) == train


def test_one_is_added_to_the_fractions_and_order_does_not_matter():
    table = labelled_table()
    splits = make_splits(table, folds=3, seeds=(0,), fractions=(0.5, 0.25))
    assert sorted(splits["fraction"].dropna().unique()) == [0.25, 0.5, 1.0]
    shuffled = table.sample(frac=1, random_state=3)
    pd.testing.assert_frame_equal(
        make_splits(shuffled, folds=3, seeds=(0,), fractions=(0.5, 0.25)), splits
    )


def test_split_file_round_trip(tmp_path, splits):
    path = tmp_path / "splits.csv"
    write_splits(splits, path)
    pd.testing.assert_frame_equal(read_splits(path), splits)


def test_bad_split_file_names_line_and_column(tmp_path, splits):
    path = tmp_path / "splits.csv"
    write_splits(splits, path)
    lines = path.read_text().splitlines()
    lines[3] = lines[3].replace("test", "holdout").replace("val", "holdout")
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SplitError, match=rf"{path}, line 4, column 'partition': not test, val"):
        read_splits(path)
    edited = splits.copy()
    first_test = edited.index[edited["partition"] == "test"][0]
    edited.loc[first_test, "partition"] = "val"
    with pytest.raises(SplitError, match="test subjects fit neither test mode"):
        write_splits(edited, path)


def test_leak_check(splits):
    test = partition_subjects(splits, 0, 0, "test")
    check_pretraining_pool(splits, ["unlabelled", *partition_subjects(splits, 0, 0, "val")])
    with pytest.raises(LeakError, match=r"2 test subject\(s\) are in the pretraining pool: "):
        check_pretraining_pool(splits, ["unlabelled", test[1], test[0]])
    with pytest.raises(LeakError, match=f"{test[0]}, {test[1]}. Remove them"):
        check_pretraining_pool(splits, [test[1], test[0]])


def test_unlabelled_manifest_cannot_be_split():
    table = labelled_table()
    table["label"] = pd.NA
    with pytest.raises(SplitError, match="no labelled rows"):
        make_splits(table)


def test_too_few_subjects_for_the_folds():
    with pytest.raises(SplitError, match="4 labelled subjects remain .* too few for 5 folds"):
        make_splits(labelled_table({(2, 1): 6}), folds=5)


def test_fraction_too_small_for_both_labels():
    table = labelled_table({(2, 0): 40, (1, 1): 4})
    with pytest.raises(SplitError) as caught:
        make_splits(table, test=0.25, folds=3, seeds=(0,), fractions=(0.05, 1.0))
    message = str(caught.value)
    assert message.startswith("seed 0, fold 0, fraction 0.05: the training set would have 1 of")
    assert "no anomalous sinus. Fractions of at least" in message


def test_invalid_arguments():
    with pytest.raises(SplitError, match=r"label fractions must be in \(0, 1\]; got \[0, 1.5\]"):
        make_splits(labelled_table(), fractions=(0, 0.5, 1.5))
    with pytest.raises(SplitError, match="folds must be an integer of at least 2"):
        make_splits(labelled_table(), folds=1)


def test_test_subjects_gives_exactly_that_many_stratified_test_subjects():
    everyone = list(subject_labels(labelled_table()).index)
    for count in (10, 25):
        splits = make_splits(labelled_table(), folds=3, seeds=(0, 1), test_subjects=count)
        test = partition_subjects(splits, 0, 0, "test")
        assert len(test) == count
        assert all(partition_subjects(splits, 1, f, "test") == test for f in range(3))
        assert_stratified(test, everyone, count / len(everyone))
        assert split_test_mode(splits) == "fixed"
    too_many = r"a test set of 62 subjects: the manifest has only 62 labelled subjects. Set "
    with pytest.raises(SplitError, match=too_many):
        make_splits(labelled_table(), folds=3, test_subjects=62)
    with pytest.raises(SplitError, match="splits.test_subjects must be null or a whole"):
        make_splits(labelled_table(), folds=3, test_subjects=2.5)


@pytest.fixture(scope="module")
def rotating():
    return make_splits(
        labelled_table(), folds=FOLDS, seeds=SEEDS, fractions=FRACTIONS, test_mode="rotating"
    )


def test_rotating_tests_every_subject_once_per_seed_with_disjoint_stratified_parts(rotating):
    everyone = sorted(subject_labels(labelled_table()).index)
    assert split_test_mode(rotating) == "rotating"
    assert not rotating.duplicated(["seed", "fold", "subject_id"]).any()  # one partition each
    for seed in SEEDS:
        tests = [partition_subjects(rotating, seed, fold, "test") for fold in range(FOLDS)]
        assert sorted(s for test in tests for s in test) == everyone  # exactly once per seed
        for fold, test in enumerate(tests):
            assert_stratified(test, everyone, 1 / FOLDS)
            val = partition_subjects(rotating, seed, fold, "val")
            train = partition_subjects(rotating, seed, fold, "train")
            assert val == tests[(fold + 1) % FOLDS]
            assert sorted(test + val + train) == everyone
            assert not (set(test) | set(val)) & set(train)
            previous = set()
            for fraction in FRACTIONS:  # nested, stratified label fractions as in fixed mode
                chosen = training_subjects(rotating, seed, fold, fraction)
                assert previous <= set(chosen) and set(chosen) <= set(train)
                assert_stratified(chosen, train, len(chosen) / len(train))
                previous = set(chosen)
    assert partition_subjects(rotating, 0, 0, "test") != partition_subjects(rotating, 1, 0, "test")


def test_rotating_split_file_round_trip_and_refusals(tmp_path, rotating):
    path = tmp_path / "splits.csv"
    write_splits(rotating, path)
    pd.testing.assert_frame_equal(read_splits(path), rotating)
    test = rotating.index[(rotating["seed"] == 0) & (rotating["fold"] == 0)]
    tested = rotating.loc[test][rotating.loc[test, "partition"] == "test"].index
    twice = rotating.copy()  # a subject tested in fold 0 and fold 1 of the same seed
    subject = twice.loc[tested[0], "subject_id"]
    other = twice.index[
        (twice["seed"] == 0) & (twice["fold"] == 1) & (twice["subject_id"] == subject)
    ]
    twice.loc[other, ["partition", "fraction"]] = ["test", np.nan]
    with pytest.raises(SplitError, match="fit neither test mode"):
        write_splits(twice, path)
    both = pd.concat([rotating, rotating.loc[tested[:1]].assign(partition="train", fraction=1.0)])
    with pytest.raises(SplitError, match="listed twice for this seed and fold"):
        write_splits(both, path)  # test and train in the same fold
    with pytest.raises(SplitError, match="splits.test_mode=rotating needs splits.folds of at"):
        make_splits(labelled_table(), folds=2, test_mode="rotating")
    pd.testing.assert_frame_equal(
        make_splits(
            labelled_table(), 0.2, FOLDS, SEEDS, FRACTIONS, 3, test_subjects=9, test_mode="rotating"
        ),
        rotating,
    )  # the fixed test set's settings play no part
    with pytest.raises(SplitError, match="splits.test_mode must be fixed or rotating"):
        make_splits(labelled_table(), test_mode="nested")
