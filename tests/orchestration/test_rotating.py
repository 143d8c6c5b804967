"""Rotating test folds end to end: a manifest cohort, `ssl3d run` and `ssl3d report` (CLI)."""

import pandas as pd
import pytest
from benchmark.datasets.manifest import read_manifest

from benchmark.cli import main
from benchmark.results import read_cells

pytestmark = pytest.mark.slow

SEEDS, FOLDS = (0, 1), 3


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cohort")
    main(["data", "phantom", "--out", str(folder), "--labelled", "18", "--unlabelled", "8",
          "--size", "33", "--workers", "1"])  # fmt: skip
    return folder / "manifest.csv"


def _settings(manifest, *extra):
    return [
        f"data.manifest={manifest}",
        "splits.test_mode=rotating",
        f"splits.folds={FOLDS}",
        f"splits.seeds=[{','.join(map(str, SEEDS))}]",
        "splits.fractions=[1.0]",
        *extra,
    ]


def test_every_labelled_subject_is_predicted_once_per_seed_and_method(manifest, tmp_path):
    out = tmp_path / "run"
    main(["run", "--profile", "smoke", "--methods", "scratch,simclr", "--out", str(out),
          *_settings(manifest, "finetune.protocols=[linear,knn]")])  # fmt: skip
    table = read_manifest(manifest).table
    labelled = table[table["label"].notna()]
    volumes = set(zip(labelled["subject_id"], labelled["side"]))
    cells = read_cells(out)
    assert len(cells) == 2 * 2 * FOLDS * len(SEEDS)
    assert all(cell["status"] == "done" for cell in cells), [c.get("error") for c in cells]
    splits = pd.read_csv(out / "data" / "splits.csv")
    for (method, protocol, seed), group in pd.DataFrame(cells).groupby(
        ["method", "protocol", "seed"]
    ):
        predicted = [(p["subject_id"], p["side"]) for c in group["predictions"] for p in c]
        assert sorted(predicted) == sorted(volumes), (method, protocol, seed)  # once each
        for _, cell in group.iterrows():  # each fold scores its own test part only
            fold = splits[(splits["seed"] == seed) & (splits["fold"] == cell["fold"])]
            test = set(fold.loc[fold["partition"] == "test", "subject_id"])
            assert {p["subject_id"] for p in cell["predictions"]} == test
    main(["report", str(out), "--bootstrap", "50"])
    pooled = pd.read_csv(out / "tables" / "pooled_auprc.csv")
    assert len(pooled) == 2 * 2 and (pooled["n"] == len(SEEDS)).all()
    assert (pooled["subjects"] == labelled["subject_id"].nunique()).all()
    assert "pooled out-of-fold" in (out / "tables" / "pooled_auprc.md").read_text()


def test_rotating_folds_refuse_a_labelled_pretraining_pool(manifest, tmp_path, capsys):
    with pytest.raises(SystemExit) as status:
        main(["run", "--profile", "smoke", "--methods", "simclr", "--out", str(tmp_path),
              *_settings(manifest, "pretrain.pool=unlabelled+train")])  # fmt: skip
    assert status.value.code == 2
    error = capsys.readouterr().err
    assert "pretrain.pool=unlabelled+train with splits.test_mode=rotating" in error
    assert "Use pretrain.pool=unlabelled." in error
