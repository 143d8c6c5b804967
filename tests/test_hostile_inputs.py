"""Hostile input at the command line: each case is refused with one sentence that names the
setting or file and what to do, before anything runs; none ends in a traceback.

The table is the contract docs/errors.md lists; a new refusal gets a row here."""

import os

import pytest

from benchmark.cli import main

# (command-line arguments after `ssl3d run --profile smoke --out OUT`, expected fragment)
RUN_SETTINGS = [
    (["data.size=0"], "'data.size' must be a whole number of voxels >= 8; got 0"),
    (["data.clip_percentiles=[99,1]"], "'data.clip_percentiles' must be two percentiles 0-100"),
    (["data.on_bad_rows=maybe"], "'data.on_bad_rows' must be one of error, exclude; got 'maybe'"),
    (["splits.fractions=[a]"], "'splits.fractions' must be a non-empty list of distinct"),
    (["splits.fractions=[0.5,0.5]"], "'splits.fractions' must be a non-empty list of distinct"),
    (["splits.folds=0"], "'splits.folds' must be a whole number of folds >= 1"),
    (["splits.seeds=[]"], "'splits.seeds' must be a non-empty list"),
    (["pretrain.max_epochs=-1"], "'pretrain.max_epochs' must be a whole number of epochs >= 1"),
    (["pretrain.max_epochs=0"], "'pretrain.max_epochs' must be a whole number of epochs >= 1"),
    (["pretrain.batch_size=2.5"], "'pretrain.batch_size' (command line) must be a whole number"),
    (["method.simclr.pretrain.batch_size=1"], "'method.simclr.pretrain.batch_size' must be"),
    (["pretrain.lr=0"], "'pretrain.lr' must be a learning rate > 0"),
    (["method.moco.pretrain.export=middle"], "'method.moco.pretrain.export' must be one of last"),
    (["finetune.protocols=[]"], "'finetune.protocols' must be a non-empty list of protocol"),
    (["finetune.localisation.stage=5"], "'finetune.localisation.stage' must be a ResNet stage"),
    (["probes.knn.metric=manhattan"], "'probes.knn.metric' must be one of cosine, euclidean"),
    (["runtime.device=tpu"], "'runtime.device' must be one of auto, cpu, cuda"),
    (["--methods", ""], "no methods chosen"),
    (["--methods", "simclr,nope"], "unknown method(s) nope"),
    (["pretrian.lr=1"], "pretrian"),
]


@pytest.mark.parametrize(("arguments", "fragment"), RUN_SETTINGS)
def test_bad_run_settings_are_one_sentence_before_anything_is_written(
    tmp_path, capsys, arguments, fragment
):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as status:
        main(["run", "--profile", "smoke", "--out", str(out), *arguments])
    error = capsys.readouterr().err
    assert status.value.code == 2
    assert fragment in error
    assert "Traceback" not in error and len(error.strip().splitlines()) == 1
    assert not out.exists()


def _file_in_the_way(out):
    out.write_text("not a folder")


def _read_only_folder(out):
    out.mkdir(mode=0o500)


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (_file_in_the_way, "a file is in the way; give a folder"),
        pytest.param(
            _read_only_folder,
            "no permission to write there",
            marks=pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere"),
        ),
    ],
)
def test_an_unusable_out_is_one_sentence(tmp_path, capsys, make, fragment):
    out = tmp_path / "out"
    make(out)
    with pytest.raises(SystemExit) as status:
        main(["run", "--profile", "smoke", "--methods", "scratch", "--out", str(out)])
    error = capsys.readouterr().err
    assert status.value.code == 2
    assert fragment in error and "Traceback" not in error
