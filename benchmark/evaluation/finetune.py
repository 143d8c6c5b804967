"""The ``finetune`` protocol: one evaluation cell of the common harness (docs/protocol.md).

The whole network is trained: the pretrained ResNet18 (or a random one for ``scratch``) plus a
head feature -> 256 -> ReLU -> 2, with Adam (lr 1e-4), batch 16, class-weighted cross-entropy
(w_j = n / (2 n_j) on the training subset), early stopping on the validation loss (patience 5)
and the best validation-loss checkpoint restored. The score of a volume is the softmax
probability of "anomalous"; the decision threshold maximises F1 on the validation set
(``benchmark.evaluation.scoring``). On a cohort with masks, the fine-tuned classifier's Grad-CAM is scored
against them before the model leaves memory (``benchmark.evaluation.localisation``).

A killed cell resumes from its work folder's ``last.ckpt``; a checkpoint there that does not
load is moved to the work folder's ``set-aside/`` (``resume_checkpoint``), the cell fine-tunes
without it, and its result lists it under ``set_aside``.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import EarlyStopping
from torch import Tensor, nn

from benchmark.datasets.batches import TensorBatches, batch_loader, set_loader_epoch
from benchmark.datasets.views import Views
from benchmark.evaluation.localisation import localise
from benchmark.evaluation.scoring import NonFiniteScoresError, score_cell
from benchmark.nn.backbone import ResNet18, load_encoder, stage_widths
from benchmark.nn.optimizers import fused_optimizer
from benchmark.nn.randomness import SeededStream
from benchmark.results import SET_ASIDE, Cell
from benchmark.rundata import RunData
from benchmark.training.runtime import (
    best_checkpoint,
    epoch_checkpoints,
    make_trainer,
    prepare_module,
    resolve_device,
    resume_checkpoint,
    training_logger,
)


def class_weights(labels: Tensor) -> Tensor:
    """w_j = n / (2 n_j): each class contributes equally to the loss (docs/protocol.md)."""
    counts = torch.bincount(labels, minlength=2).float()
    return len(labels) / (2 * counts.clamp_min(1))


class Classifier(SeededStream):
    """Backbone + head (feature -> hidden -> ReLU -> 2), trained end to end."""

    def __init__(self, backbone: ResNet18, settings: DictConfig, weights: Tensor, seed: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Sequential(
            nn.Linear(backbone.feature_dim, int(settings.head_hidden)),
            nn.ReLU(inplace=True),
            nn.Linear(int(settings.head_hidden), 2),
        )
        self.register_buffer("weights", weights)
        self.settings = settings
        self.views = Views.from_config(settings.get("views"))
        self.stream_seed = seed

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.backbone(images))

    def training_step(self, batch: dict[str, Tensor], batch_index: int) -> Tensor:
        images, _ = self.views(batch["image"], generator=self.rng)
        loss = F.cross_entropy(self(images), batch["label"], weight=self.weights)
        self.log("train_loss", loss.detach(), on_step=False, on_epoch=True, batch_size=len(images))
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_index: int) -> None:
        loss = F.cross_entropy(self(batch["image"]), batch["label"], weight=self.weights)
        self.log("val_loss", loss, on_step=False, on_epoch=True, batch_size=len(batch["label"]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(
            self.parameters(), lr=float(self.settings.lr), **fused_optimizer(self)
        )

    @torch.no_grad()
    def scores(self, images: Tensor, batch_size: int) -> Tensor:
        """Probability of "anomalous" for each volume, in evaluation mode."""
        self.eval()
        outputs = []
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size].to(self.device)
            outputs.append(torch.softmax(self(batch).float(), dim=1)[:, 1].cpu())
        return torch.cat(outputs)


def cell_seed(cell: Cell) -> int:
    """The seed of a cell's head initialisation, batch order and views.

    It depends on (seed, fold, fraction) but not on the method, so every method is fine-tuned
    with the same batches and head start: the comparison between methods is paired.
    """
    return cell.seed * 1_000_003 + cell.fold * 1_009 + int(round(cell.fraction * 1000))


def finetune_settings(cfg: DictConfig) -> dict:
    """The settings a ``finetune`` cell depends on: ``finetune`` without the grid's protocol
    list and the ``external`` method's encoder file (whose hash its cells carry instead)."""
    settings = OmegaConf.to_container(cfg.finetune, resolve=True)
    for grid_setting in ("protocols", "encoder", "allow_pickle"):
        settings.pop(grid_setting)
    return settings


def run_finetune(
    cell: Cell, cfg: DictConfig, data: RunData, encoder_path: Path | None, workdir: Path
) -> dict:
    """Fine-tune and score one cell; returns the result fields of its cell file."""
    settings = cfg.finetune
    seed = cell_seed(cell)
    pl.seed_everything(seed, verbose=False)
    widths = stage_widths(float(cfg.backbone.width_multiplier))
    backbone = load_encoder(encoder_path, widths) if encoder_path else ResNet18(widths)

    train_rows = data.training_rows(cell.seed, cell.fold, cell.fraction)
    val_rows = data.partition_rows(cell.seed, cell.fold, "val")
    test_rows = data.partition_rows(cell.seed, cell.fold, "test")
    train_labels = data.labels(train_rows)
    model = Classifier(
        backbone,
        settings,
        class_weights(train_labels) if settings.class_weighted else torch.ones(2),
        seed,
    )
    prepare_module(model, cfg.runtime)

    batch_size = int(settings.batch_size)
    device = resolve_device(cfg.runtime)
    placement = str(cfg.runtime.cohort_on_device)
    train_loader = batch_loader(
        TensorBatches(image=data.images(train_rows), label=train_labels),
        batch_size,
        seed,
        device=device,
        placement=placement,
    )
    val_loader = batch_loader(
        TensorBatches(image=data.images(val_rows), label=data.labels(val_rows)),
        batch_size,
        seed,
        shuffle=False,
        device=device,
        placement=placement,
    )
    checkpoints = epoch_checkpoints(workdir, "val_loss")
    best_keeper = checkpoints[0]
    trainer = make_trainer(
        cfg.runtime,
        workdir,
        int(settings.max_epochs),
        [*checkpoints, EarlyStopping("val_loss", patience=int(settings.patience))],
        logger=training_logger(cfg.runtime, workdir, cell.title),
    )
    restart = f"Delete {workdir} to fine-tune {cell.title} again from its first epoch."
    resume = resume_checkpoint(workdir, workdir, restart)
    if resume.checkpoint is not None:
        set_loader_epoch(train_loader, resume.epoch)
    trainer.fit(model, train_loader, val_loader, ckpt_path=resume.checkpoint, weights_only=True)
    if not best_keeper.best_model_path:
        raise NonFiniteScoresError(
            f"{cell.title}: the validation loss was never finite; lower finetune.lr"
        )
    best = best_checkpoint(best_keeper, workdir, restart)
    model.load_state_dict(best["state_dict"])

    val_scores = model.scores(data.images(val_rows), batch_size * 4)
    test_scores = model.scores(data.images(test_rows), batch_size * 4)
    result = score_cell(
        cell, data, val_rows, val_scores, test_rows, test_scores, "lower finetune.lr"
    )
    result.update(
        epochs=trainer.current_epoch, best_epoch=int(best["epoch"]), n_train=len(train_rows)
    )
    if resume.set_aside:
        result["set_aside"] = list(resume.set_aside)
    started = time.perf_counter()
    localisation = localise(
        model.backbone, model.head, data, test_rows, settings.localisation, batch_size
    )
    if localisation is not None:
        result["localisation"] = {
            **localisation,
            "seconds": round(time.perf_counter() - started, 2),
        }
    _remove_checkpoints(workdir)
    return result


def _remove_checkpoints(workdir: Path) -> None:
    """The finished cell's checkpoints deleted; ``workdir`` too unless it keeps the curves of
    ``runtime.logger`` (``logs/``) or checkpoints that could not be used (``set-aside/``)."""
    if (workdir / "logs").is_dir() or (workdir / SET_ASIDE).is_dir():
        for checkpoint in workdir.glob("*.ckpt"):
            checkpoint.unlink()
    else:
        shutil.rmtree(workdir, ignore_errors=True)
