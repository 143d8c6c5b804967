"""A smoke run's live curves (runtime.logger) and its encoder, exported and evaluated again
through the grid as the `external` method (finetune.encoder)."""

import importlib.util
import shutil

import pandas as pd
import pytest
import torch

from benchmark.cli import main
from benchmark.config import load_config
from benchmark.evaluation.shared_encoder import SharedEncoderError, read_shared_encoder
from benchmark.nn.backbone import ResNet18, save_encoder_safetensors, stage_widths
from benchmark.results import read_json

# One label fraction keeps the grid small: 2 folds x (finetune, linear) cells.
ONE_FRACTION = "splits.fractions=[1.0]"
ONE_SEED = "splits.seeds=[0]"


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("logged-run")
    main(["run", "--profile", "smoke", "--methods", "simclr", "--out", str(out), ONE_FRACTION, ONE_SEED,
          "finetune.protocols=[finetune,linear]", "runtime.logger=csv"])  # fmt: skip
    return out


def run_external(out, encoder, *arguments):
    main(["run", "--profile", "smoke", "--methods", "external", "--out", str(out), *arguments,
          ONE_FRACTION, ONE_SEED, "finetune.protocols=[linear]", f"finetune.encoder={encoder}"])  # fmt: skip


def linear_cell(out, method, fold):
    return read_json(out / "cells" / method / "linear" / "f1" / f"fold{fold}" / "seed0.json")


@pytest.mark.slow
def test_csv_logger_writes_lightnings_metrics_of_pretraining_and_fine_tuning(logged_run):
    unit = logged_run / "pretrain" / "simclr" / "seed0"
    # Lightning writes validation and training values of an epoch as two rows.
    metrics = pd.read_csv(unit / "logs" / "version_0" / "metrics.csv").groupby("epoch").first()
    losses = pd.read_csv(unit / "losses.csv")
    assert list(metrics.index) == list(losses["epoch"]) == [0, 1]
    for column in ("train_loss", "val_loss"):
        assert metrics[column].to_numpy() == pytest.approx(losses[column].to_numpy(), rel=1e-6)
    cell = logged_run / "work" / "simclr" / "finetune" / "f1" / "fold0" / "seed0"
    curves = pd.read_csv(cell / "logs" / "version_0" / "metrics.csv")
    assert curves["val_loss"].notna().any() and curves["train_loss"].notna().any()
    assert not list(cell.glob("*.ckpt"))  # the finished cell's checkpoints are gone
    record = read_json(logged_run / "cells" / "simclr" / "finetune" / "f1" / "fold0" / "seed0.json")
    assert "runtime" not in record["config"] and record["status"] == "done"


@pytest.mark.skipif(
    any(importlib.util.find_spec(name) for name in ("tensorboard", "tensorboardX")),
    reason="tensorboard is installed here",
)
def test_tensorboard_logger_without_tensorboard_names_the_pip_command(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["run", "--profile", "smoke", "--methods", "scratch", "--out",
              str(tmp_path / "run"), "runtime.logger=tensorboard"])  # fmt: skip
    error = capsys.readouterr().err
    assert "runtime.logger=tensorboard" in error and "pip install ssl3d[tensorboard]" in error
    assert not (tmp_path / "run" / "data").exists()  # refused before the data were staged


@pytest.mark.slow
def test_an_exported_encoder_evaluated_as_external_gives_the_methods_own_numbers(
    logged_run, tmp_path, capsys
):
    shared = tmp_path / "shared"
    main(["export", str(logged_run), "--method", "simclr", "--out", str(shared)])
    out = tmp_path / "external-run"
    run_external(out, shared / "model.safetensors")
    for fold in (0, 1):
        original = linear_cell(logged_run, "simclr", fold)
        external = linear_cell(out, "external", fold)
        assert external["status"] == "done"
        assert external["metrics"]["auprc"] == original["metrics"]["auprc"]
        assert external["predictions"] == original["predictions"]
        assert external["encoder_file"] == str(shared / "model.safetensors")

    # A changed file is another encoder: its cells' hash changes, so they are computed again.
    before = linear_cell(out, "external", 0)
    state = torch.load(
        logged_run / "pretrain" / "simclr" / "seed0" / "encoder.pt", weights_only=True
    )
    changed = ResNet18(stage_widths(0.125))
    changed.load_state_dict({k: v.flip(0) if v.dim() else v for k, v in state.items()})
    save_encoder_safetensors(changed, shared / "model.safetensors")
    with pytest.raises(SystemExit):
        run_external(out, shared / "model.safetensors")
    assert "made with other settings" in capsys.readouterr().err
    run_external(out, shared / "model.safetensors", "--force")
    after = linear_cell(out, "external", 0)
    assert after["status"] == "done" and after["config_hash"] != before["config_hash"]
    assert after["predictions"] != before["predictions"]


@pytest.mark.slow
def test_a_pickle_from_outside_the_run_folder_is_refused_unless_allowed(
    logged_run, tmp_path, capsys
):
    outside = tmp_path / "encoder.pt"
    shutil.copy(logged_run / "pretrain" / "simclr" / "seed0" / "encoder.pt", outside)
    with pytest.raises(SystemExit):
        run_external(tmp_path / "run", outside)
    error = capsys.readouterr().err
    assert "a pickle" in error and "finetune.allow_pickle=true" in error and "safetensors" in error
    assert not (tmp_path / "run" / "cells").exists()

    def check(encoder, out, *settings):
        cfg = load_config("smoke", [f"finetune.encoder={encoder}", *settings], ["external"])
        return read_shared_encoder(cfg, out)

    assert check(outside, tmp_path / "run", "finetune.allow_pickle=true").widths == (8, 16, 32, 64)
    inside = logged_run / "pretrain" / "simclr" / "seed0" / "encoder.pt"
    assert check(inside, logged_run).widths == (8, 16, 32, 64)  # the run's own file


def test_an_encoder_of_another_width_or_kind_is_refused_with_what_to_set(tmp_path):
    wider = tmp_path / "wide.safetensors"
    save_encoder_safetensors(ResNet18(stage_widths(0.25)), wider)
    cfg = load_config("smoke", [f"finetune.encoder={wider}"], ["external"])
    with pytest.raises(SharedEncoderError, match=r"widths 16/32/64/128.*width_multiplier=0\.25"):
        read_shared_encoder(cfg, tmp_path)

    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(2, 2)}, str(other))
    cfg = load_config("smoke", [f"finetune.encoder={other}"], ["external"])
    with pytest.raises(SharedEncoderError, match="not a 3D ResNet18 state dict"):
        read_shared_encoder(cfg, tmp_path)
