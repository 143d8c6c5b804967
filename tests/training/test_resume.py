"""A killed pretraining resumes at its last finished epoch and ends with the same encoder as an
uninterrupted one, with validation or without, whatever the validation loss does."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from benchmark.training.runtime import epoch_checkpoints

pytestmark = pytest.mark.slow

GRID = ["splits.seeds=[0]", "splits.fractions=[1.0]", "finetune.protocols=[linear]"]


def _command(out: Path, method: str, settings: list[str]) -> list[str]:
    return [
        *(sys.executable, "-m", "benchmark", "run", "--profile", "smoke"),
        *("--methods", method, "--out", str(out), *GRID, *settings),
    ]


def _encoder(out: Path, method: str) -> dict[str, torch.Tensor]:
    return torch.load(out / "pretrain" / method / "seed0" / "encoder.pt", weights_only=True)


@pytest.mark.parametrize(
    ("method", "settings"),
    [
        ("simclr", ["pretrain.val_fraction=0"]),  # contrastive, no validation loss at all
        ("autoencoder", ["pretrain.export=best"]),  # reconstruction, a best checkpoint kept too
    ],
)
def test_a_killed_pretraining_resumes_to_the_uninterrupted_encoder(tmp_path, method, settings):
    settings = ["pretrain.max_epochs=4", *settings]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    done = subprocess.run(_command(whole, method, settings), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr

    process = subprocess.Popen(
        _command(killed, method, settings), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    losses = killed / "pretrain" / method / "seed0" / "losses.csv"
    deadline = time.time() + 600
    while not (losses.exists() and len(losses.read_text().splitlines()) >= 3):  # 2 epochs done
        assert process.poll() is None, process.stderr.read()
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    resumed = subprocess.run(_command(killed, method, settings), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr

    record = json.loads((killed / "pretrain" / method / "seed0" / "pretrain.json").read_text())
    # Killed after the loss row of epoch 1: at worst between that row and epoch 1's checkpoint.
    assert record["resumed_at_epoch"] >= 1
    cell = next((killed / "cells" / method).rglob("*.json"))
    assert json.loads(cell.read_text())["pretraining"]["resumed_at_epoch"] >= 1
    expected = _encoder(whole, method)
    for name, tensor in _encoder(killed, method).items():
        assert torch.equal(tensor, expected[name]), name


class _WorseningModule(pl.LightningModule):
    """A validation loss that rises every epoch: a monitored checkpoint is never saved again."""

    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(2, 1)

    def training_step(self, batch, index):
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, index):
        self.log("val_loss", float(self.current_epoch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_last_checkpoint_follows_every_epoch_while_the_validation_loss_worsens(tmp_path):
    seen = []

    class Watch(pl.Callback):
        def on_train_epoch_start(self, trainer, module):
            if (tmp_path / "last.ckpt").exists():
                seen.append(torch.load(tmp_path / "last.ckpt", weights_only=True)["epoch"])

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(4, 2)))
    trainer = pl.Trainer(
        max_epochs=4,
        callbacks=[*epoch_checkpoints(tmp_path, "val_loss"), Watch()],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(_WorseningModule(), data, data)
    assert seen == [0, 1, 2]  # written after epochs 0, 1, 2 before epochs 1, 2, 3 started
    assert torch.load(tmp_path / "best.ckpt", weights_only=True)["epoch"] == 0
