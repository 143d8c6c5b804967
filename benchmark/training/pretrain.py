"""Pretraining of one unit: the method's stages, Lightning training with checkpoints, export.

Each unit (``benchmark/training/units.py``) writes, under its directory::

    encoder.pt      plain state dict of the ResNet18 (loads strict into MONAI's resnet18): the
                    weights after the last optimiser step (``pretrain.export: last``), or those
                    of the best validation loss (``best``)
    losses.csv      per-epoch training and validation losses
    logs/           the same losses for ``runtime.logger`` (csv, tensorboard or mlflow)
    pretrain.json   status, config hash, resolved settings, seed, optimiser steps and seconds
                    of the training and of each stage the method built, versions, and
                    ``set_aside``: the unit's files moved aside (file, moved_to, reason)
    stages/         cached products of the method's ``prepare`` step
    checkpoints/    last and best Lightning checkpoints while running (removed when done)
    set-aside/      checkpoints or an ``encoder.pt`` that did not load (torn, foreign or
                    altered), kept under their relative paths and never read again; the unit
                    resumed without them or pretrained again (docs/errors.md)

Every method pretrains for the same fixed budget: ``pretrain.max_epochs`` over the pool (or
``pretrain.max_steps``), with its learning-rate and momentum schedules laid out over exactly
that. Early stopping on the validation loss (``pretrain.patience`` > 0) is an option that every
shipped profile leaves off: SSL losses are comparable neither across methods nor across epochs.

Data-parallel pretraining (``runtime.devices`` x ``runtime.num_nodes`` > 1) runs this same
function in every rank's process. ``pretrain.batch_size`` stays the global batch: each rank
trains on its ``1 / world_size`` share of every batch, from its own shard of each epoch
(``datasets/batches.py``), so the steps per epoch, the learning-rate schedule and the methods'
queues mean what they mean on one device. Rank 0 alone writes files and logs; it builds the
method's stages, which the other ranks wait for and load.
"""

from __future__ import annotations

import csv
import shutil
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint

from benchmark.config import config_hash, method_hparams, pretraining_settings
from benchmark.context import PretrainingContext, PretrainingUnit
from benchmark.datasets.batches import TensorBatches, batch_loader, set_loader_epoch
from benchmark.errors import RuntimeSettingError, UserError
from benchmark.method import SSLMethod
from benchmark.nn.backbone import ResNet18, load_encoder, save_encoder, stage_widths
from benchmark.registry import get_method
from benchmark.results import (
    describe_set_aside,
    read_json,
    recorded_set_aside,
    versions,
    write_json_atomic,
)
from benchmark.rundata import RunData, prepare_data
from benchmark.training.runtime import (
    Ranks,
    apply_host_settings,
    best_checkpoint,
    epoch_checkpoints,
    make_trainer,
    prepare_module,
    process_ranks,
    resolve_device,
    resume_checkpoint,
    training_device,
    training_logger,
)
from benchmark.training.units import (
    PREPROCESSING_KEYS,
    is_finished,
    pretraining_fingerprint,
    pretraining_units,
    unit_settings,
)


class LossTable(pl.Callback):
    """Writes ``losses.csv``: one row per epoch with every logged loss and the learning rate.

    On resume, rows of epochs after the restored checkpoint are dropped first. Under
    data-parallel training rank 0 writes it; the losses are already means over all ranks.
    """

    def __init__(self, path: Path):
        self.path = path
        self.started = time.perf_counter()
        self.resumed_at_epoch: int | None = None  # the first epoch this process ran, on resume

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        # After Lightning restored the loop state, current_epoch is the epoch to run next.
        if trainer.current_epoch > 0:
            self.resumed_at_epoch = trainer.current_epoch
        if trainer.is_global_zero and self.path.exists():
            with self.path.open() as handle:
                kept = [
                    row
                    for row in csv.DictReader(handle)
                    if int(row["epoch"]) < trainer.current_epoch
                ]
            self._write(kept)

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        # Every rank reads the metrics: reading them is what averages them over the ranks.
        metrics = sorted(trainer.callback_metrics.items())
        if not trainer.is_global_zero:
            return
        row = {
            "epoch": trainer.current_epoch,
            "seconds": round(time.perf_counter() - self.started, 2),
        }
        row["lr"] = trainer.optimizers[0].param_groups[0]["lr"]
        for key, value in metrics:
            row[key] = float(value)
        rows = []
        if self.path.exists():
            with self.path.open() as handle:
                rows = list(csv.DictReader(handle))
        self._write(rows + [row])

    def _write(self, rows: list[dict]) -> None:
        columns = list(dict.fromkeys(key for row in rows for key in row))
        temporary = self.path.with_suffix(".tmp")
        with temporary.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        temporary.replace(self.path)


def pool_batches(data: RunData, rows: np.ndarray) -> TensorBatches:
    """Pretraining batches: ``image`` and ``row``, the volumes' positions in the cohort (for
    methods that look up per-volume targets they prepared, such as residual maps)."""
    return TensorBatches(image=data.images(rows), row=torch.as_tensor(rows, dtype=torch.long))


def build_method(cfg: DictConfig, method: str, training: DictConfig | None = None) -> SSLMethod:
    """The method's module around a fresh ResNet18 of the configured width; ``training``: its
    pretraining settings (a unit's ``unit_settings``; by default the method's, seed offset
    ``pretrain.seed``)."""
    backbone = ResNet18(stage_widths(float(cfg.backbone.width_multiplier)))
    if training is None:
        training = pretraining_settings(cfg, method)
    return get_method(method)(backbone, method_hparams(cfg, method), training)


def split_pool(
    cfg: DictConfig, unit: PretrainingUnit, data: RunData
) -> tuple[np.ndarray, np.ndarray, str]:
    """The unit's pretraining pool split into training and validation rows, and a sentence
    that says what the pool is: ``pretrain.val_fraction`` of the pool's subjects (grouped) are
    held out for the validation loss, drawn with the unit's seed."""
    settings = unit_settings(cfg, unit)
    rows, pool_note = data.pretraining_pool(settings.pool)
    subject_of_row = data.cohort.table["subject_id"].iloc[rows]
    subjects = np.array(sorted(subject_of_row.unique()))
    generator = np.random.default_rng(int(settings.seed))
    count = int(round(float(settings.val_fraction) * len(subjects)))
    held_out = set(generator.permutation(subjects)[:count]) if count < len(subjects) else set()
    is_val = subject_of_row.isin(held_out).to_numpy()
    return rows[~is_val], rows[is_val], pool_note


def pretraining_context(
    cfg: DictConfig,
    unit: PretrainingUnit,
    data: RunData,
    device: torch.device,
    log: Callable[[str], None] = print,
    builds_stages: bool = True,
    rows: np.ndarray | None = None,
) -> PretrainingContext:
    """The narrow view of this run that the unit's method receives in ``prepare``/``export``.

    ``rows``: the volumes it trains on, all of them (for short runs without a validation
    loss: the tests' and perf's); by default the unit's pool split as ``run_pretraining``
    splits it."""
    if rows is None:
        train_rows, val_rows, _ = split_pool(cfg, unit, data)
    else:
        train_rows, val_rows = rows, rows[:0]
    return PretrainingContext(
        unit=unit,
        data=data,
        pool_rows=train_rows,
        pool_val_rows=val_rows,
        image_size=int(cfg.data.size),
        preprocessing={key: cfg.data[key] for key in PREPROCESSING_KEYS},
        label_fractions=tuple(float(f) for f in cfg.splits.fractions),
        prepare=partial(prepare_module, runtime=cfg.runtime),
        device=device,
        log=log,
        builds_stages=builds_stages,
        run_settings=cfg,
    )


def rank_batch_size(batch_size: int, ranks: Ranks) -> int:
    """Each rank's share of the global ``pretrain.batch_size``: a whole number, at least 2."""
    share, rest = divmod(batch_size, ranks.world_size)
    if rest or share < 2:
        raise RuntimeSettingError(
            f"pretrain.batch_size={batch_size} is the global batch of {ranks.world_size} "
            "processes (runtime.devices x runtime.num_nodes); it must split into equal shares "
            f"of at least 2 volumes (BatchNorm, gathered negatives), e.g. {2 * ranks.world_size}"
        )
    return share


def check_launch(cfg: DictConfig, ranks: Ranks) -> None:
    """Data-parallel ranks are copies of this command, which a Ray worker is not."""
    if ranks.world_size > 1 and cfg.executor.name != "local":
        raise RuntimeSettingError(
            "runtime.devices x runtime.num_nodes > 1 runs every rank as a copy of this command "
            f"(Lightning, srun or torchrun), which executor.name={cfg.executor.name} cannot "
            "start; use the local executor for data-parallel pretraining"
        )


def _ignore(message: str) -> None:
    """The log of ranks other than 0 (rank 0 says everything once)."""


def run_pretraining(
    cfg: DictConfig,
    unit: PretrainingUnit,
    data: RunData,
    log: Callable[[str], None] = print,
) -> Path:
    """Pretrain one unit (resuming from its last checkpoint if one exists); returns encoder.pt."""
    fingerprint = pretraining_fingerprint(cfg, unit, data)
    expected = config_hash(fingerprint)
    ranks = process_ranks(cfg.runtime)
    log = log if ranks.is_main else _ignore
    if is_finished(unit, expected, log, moves=ranks.is_main):
        return unit.encoder_path
    settings = unit_settings(cfg, unit)
    export = str(settings.export)  # last | best, checked with every setting (config.py)
    apply_host_settings(cfg.runtime)
    check_launch(cfg, ranks)
    device = training_device(cfg.runtime, ranks)
    train_rows, val_rows, pool_note = split_pool(cfg, unit, data)
    log(f"pretraining {unit.title} on {pool_note} ({len(train_rows)} train / {len(val_rows)} val)")

    pl.seed_everything(int(settings.seed), verbose=False)
    method = build_method(cfg, unit.method, settings)
    batch_size = int(settings.batch_size)
    method.check_settings(min(batch_size, len(train_rows)))
    share = rank_batch_size(batch_size, ranks) if ranks.world_size > 1 else batch_size
    context = pretraining_context(cfg, unit, data, device, log, builds_stages=ranks.is_main)
    started = time.perf_counter()
    record = {
        "status": "running",
        "config_hash": expected,
        "config": fingerprint,
        "title": unit.title,
        "seed": int(settings.seed),
        "pool": pool_note,
        "export": export,
        # Files of the unit that could not be used and were moved aside, in this or a former run.
        "set_aside": recorded_set_aside(read_json(unit.record_path)),
    }
    if ranks.is_main:
        unit.directory.mkdir(parents=True, exist_ok=True)
        write_json_atomic(unit.record_path, record)
    method.prepare(context)
    prepare_module(method, cfg.runtime)
    train_rows, val_rows = method.pretraining_rows(context)

    checkpoints = unit.directory / "checkpoints"
    validate = len(val_rows) > 0
    monitor = "val_loss" if validate and (export == "best" or int(settings.patience) > 0) else None
    keepers = epoch_checkpoints(checkpoints, monitor)
    best_keeper = keepers[0] if monitor else None
    loss_table = LossTable(unit.directory / "losses.csv")
    callbacks: list[pl.Callback] = [*keepers, loss_table]
    if validate and int(settings.patience) > 0:
        callbacks.append(EarlyStopping("val_loss", patience=int(settings.patience)))
    trainer = make_trainer(
        cfg.runtime,
        checkpoints,
        int(settings.max_epochs),
        callbacks,
        int(settings.max_steps),
        validate,
        data_parallel=True,
        sync_batchnorm=method.sync_batchnorm,
        logger=training_logger(cfg.runtime, unit.directory, unit.title),
    )
    loader = partial(
        batch_loader,
        batch_size=share,
        device=device,
        placement=str(cfg.runtime.cohort_on_device),
        rank=ranks.global_rank,
        world_size=ranks.world_size,
    )
    train_loader = loader(pool_batches(data, train_rows), seed=int(settings.seed))
    val_loader = loader(pool_batches(data, val_rows), seed=0, shuffle=False) if validate else None
    resume = resume_checkpoint(
        checkpoints, unit.directory, _restart(unit, checkpoints), moves=ranks.is_main
    )
    for entry in resume.set_aside:
        log(f"{unit.title}: {describe_set_aside(entry, unit.directory)}")
    if resume.set_aside:
        record["set_aside"] = [*record["set_aside"], *resume.set_aside]
        write_json_atomic(unit.record_path, record)
    if resume.checkpoint is not None:
        log(f"{unit.title}: resuming from {resume.checkpoint}")
        set_loader_epoch(train_loader, resume.epoch)
    elif resume.set_aside:
        log(f"{unit.title}: pretraining from the first epoch")
    trainer.fit(method, train_loader, val_loader, ckpt_path=resume.checkpoint, weights_only=True)
    if ranks.is_main:
        record["resumed_at_epoch"] = loss_table.resumed_at_epoch
        _finish_unit(unit, method, trainer, best_keeper, context, record, started)
        log(f"pretrained {unit.title} in {record['seconds']:.0f} s -> {unit.encoder_path}")
    trainer.strategy.barrier()  # every rank returns once encoder.pt exists
    return unit.encoder_path


def _finish_unit(
    unit: PretrainingUnit,
    method: SSLMethod,
    trainer: pl.Trainer,
    best_keeper: ModelCheckpoint | None,
    context: PretrainingContext,
    record: dict,
    started: float,
) -> None:
    """Rank 0 after training: the last (or, with ``pretrain.export=best``, the best) weights
    exported, the record done, checkpoints gone."""
    best_epoch = None
    folder = unit.directory / "checkpoints"
    if best_keeper and best_keeper.best_model_path:
        best = best_checkpoint(best_keeper, folder, _restart(unit, folder))
        best_epoch = int(best["epoch"])
        if record["export"] == "best":
            method.load_state_dict(best["state_dict"])
    save_encoder(method.encoder, unit.encoder_path)
    method.export(context)
    seconds = round(time.perf_counter() - started, 1)
    record.update(
        status="done",
        epochs=trainer.current_epoch,
        steps=int(trainer.global_step),
        best_epoch=best_epoch,
        best_val_loss=float(best_keeper.best_model_score) if best_epoch is not None else None,
        stages=context.stages_used,
        stage_costs=context.stage_costs,
        notes=context.notes,
        backbone=method.encoder.description,
        seconds=seconds,
        versions=versions(),
    )
    write_json_atomic(unit.record_path, record)
    shutil.rmtree(folder, ignore_errors=True)


def _restart(unit: PretrainingUnit, checkpoints: Path) -> str:
    """What to do about a checkpoint of the unit that cannot be used."""
    return f"Delete {checkpoints} to pretrain {unit.title} again from its first epoch."


def open_pretrained(
    out: Path, method: str, seed: int, fold: int, log: Callable[[str], None] = print
) -> tuple[SSLMethod, PretrainingContext]:
    """A finished unit of run folder ``out`` rebuilt: the method with its exported encoder
    loaded, and the unit's context (for figures and checks that a method draws of itself)."""
    out = Path(out)
    if not (out / "run.yaml").exists():
        raise UserError(f"{out}: no run.yaml; run `ssl3d run --methods {method} --out {out}`")
    cfg = OmegaConf.load(out / "run.yaml")
    unit = next(
        (
            u
            for u in pretraining_units(cfg, method, out)
            if u.seed == seed and (u.fold is None or u.fold == fold)
        ),
        None,
    )
    if unit is None or not unit.encoder_path.exists():
        raise UserError(
            f"{out}: no finished {method} pretraining for seed {seed} fold {fold}; run "
            f"`ssl3d run --methods {method} --out {out}` first (seeds {list(cfg.splits.seeds)}, "
            f"folds 0-{int(cfg.splits.folds) - 1})"
        )
    data = prepare_data(cfg, out, log)
    device = resolve_device(cfg.runtime)
    built = build_method(cfg, method, unit_settings(cfg, unit))
    built.backbone = load_encoder(unit.encoder_path, built.backbone.widths)
    return built, pretraining_context(cfg, unit, data, device, log)
