"""Pretraining of one method: stages, Lightning training with checkpoints, encoder export.

A pretraining *unit* is one method pretrained once per run (``pretraining_scope = "run"``) or
once per (seed, fold) for methods whose preparation uses a fold's labelled data
(``"fold"``, e.g. the residual method's autoencoder trained on that fold's normal subjects).
Each unit writes, under its directory::

    encoder.pt      plain state dict of the ResNet18 (loads strict into MONAI's resnet18)
    losses.csv      per-epoch training and validation losses
    pretrain.json   status, config hash, resolved settings, timings, versions
    stages/         cached products of the method's ``prepare`` step
    checkpoints/    last and best Lightning checkpoints while running (removed when done)
"""

from __future__ import annotations

import csv
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import EarlyStopping

from benchmark.backbone import ResNet18, save_encoder, stage_widths
from benchmark.batches import TensorBatches, batch_loader
from benchmark.config import config_hash, method_hparams, pretraining_settings
from benchmark.method import SSLMethod
from benchmark.registry import get_method
from benchmark.results import read_json, versions, write_json_atomic
from benchmark.rundata import RunData
from benchmark.runtime import (
    apply_threads,
    epoch_checkpoints,
    make_trainer,
    prepare_module,
    resolve_device,
)


@dataclass(frozen=True)
class PretrainingUnit:
    """One pretraining: a method, and for fold-scoped methods the (seed, fold) it serves."""

    method: str
    directory: Path
    seed: int | None = None
    fold: int | None = None

    @property
    def title(self) -> str:
        where = "" if self.fold is None else f" (seed {self.seed}, fold {self.fold})"
        return f"{self.method}{where}"

    @property
    def encoder_path(self) -> Path:
        return self.directory / "encoder.pt"

    @property
    def record_path(self) -> Path:
        return self.directory / "pretrain.json"


def pretraining_units(cfg: DictConfig, method: str, out: Path) -> list[PretrainingUnit]:
    """The pretraining units a method needs in this run (none for ``scratch``)."""
    cls = get_method(method)
    root = out / "pretrain" / method
    if not cls.needs_pretraining:
        return []
    if cls.pretraining_scope == "run":
        return [PretrainingUnit(method, root)]
    if cls.pretraining_scope == "fold":
        return [
            PretrainingUnit(method, root / f"seed{seed}" / f"fold{fold}", seed, fold)
            for seed in cfg.splits.seeds
            for fold in range(int(cfg.splits.folds))
        ]
    raise ValueError(f"{cls.__name__}.pretraining_scope must be 'run' or 'fold'")


def unit_for(units: list[PretrainingUnit], seed: int, fold: int) -> PretrainingUnit | None:
    """The unit whose encoder an evaluation cell of (seed, fold) starts from."""
    for unit in units:
        if unit.fold is None or (unit.seed, unit.fold) == (seed, fold):
            return unit
    return None


@dataclass
class PretrainingContext:
    """What a method's ``prepare`` step may use, and the stage cache it stores results in.

    ``notes`` collects facts the method reports about its stages (for example how well the
    residual method's targets localise anomalies); they are written into ``pretrain.json``.
    """

    unit: PretrainingUnit
    data: RunData
    config: DictConfig
    pool_rows: np.ndarray
    device: torch.device
    log: Callable[[str], None] = print
    stages_used: list[str] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)

    def labelled_training_rows(self, fraction: float = 1.0) -> np.ndarray:
        """Labelled training volumes of this unit's fold (never validation or test subjects)."""
        if self.unit.fold is None:
            raise RuntimeError(
                f"{self.unit.method}: labelled training rows exist per fold; declare "
                "pretraining_scope = 'fold' to use them"
            )
        return self.data.training_rows(self.unit.seed, self.unit.fold, fraction)

    def stage(
        self, name: str, settings: Mapping[str, Any], build: Callable[[], dict[str, Any]]
    ) -> dict[str, Any]:
        """The result of ``build()``, computed once and cached, keyed by ``settings``.

        ``settings`` must hold everything the result depends on (including the keys of stages
        it was built from); the data fingerprint is added here. A re-run with equal settings
        loads the cached file instead of building again.
        """
        key = config_hash({"settings": settings, "data": self.data.fingerprint})
        path = self.unit.directory / "stages" / f"{name}-{key}.pt"
        self.stages_used.append(path.name)
        if path.exists():
            self.log(f"{self.unit.title}: reusing stage '{name}' ({path.name})")
            return torch.load(path, map_location="cpu", weights_only=False)
        started = time.perf_counter()
        result = build()
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        torch.save(result, temporary)
        temporary.replace(path)
        self.log(
            f"{self.unit.title}: stage '{name}' built in {time.perf_counter() - started:.0f} s"
        )
        return result


def pretraining_fingerprint(cfg: DictConfig, unit: PretrainingUnit, data: RunData) -> dict:
    """Everything a unit's encoder depends on; its hash decides whether the unit is done."""
    pool_rows, _ = data.pretraining_pool(pretraining_settings(cfg, unit.method).pool)
    fingerprint = {
        "method": unit.method,
        "seed": unit.seed,
        "fold": unit.fold,
        "settings": method_hparams(cfg, unit.method),
        "pretrain": pretraining_settings(cfg, unit.method),
        "backbone": cfg.backbone,
        "data": {
            "cohort": data.fingerprint,
            "preprocessing": {
                k: cfg.data[k] for k in ("size", "crop", "clip_percentiles", "mirror_right")
            },
            "pool": data.subjects_fingerprint(pool_rows),
        },
    }
    if unit.fold is not None:
        rows = data.training_rows(unit.seed, unit.fold, 1.0)
        fingerprint["data"]["fold_training"] = data.subjects_fingerprint(rows)
    return OmegaConf.to_container(OmegaConf.create(fingerprint), resolve=True)


def is_finished(unit: PretrainingUnit, expected_hash: str) -> bool:
    """True when the unit's encoder exists and was made with these settings."""
    record = read_json(unit.record_path)
    return (
        record is not None
        and record.get("status") == "done"
        and record.get("config_hash") == expected_hash
        and unit.encoder_path.exists()
    )


class LossTable(pl.Callback):
    """Writes ``losses.csv``: one row per epoch with every logged loss and the learning rate.

    On resume, rows of epochs after the restored checkpoint are dropped first.
    """

    def __init__(self, path: Path):
        self.path = path
        self.started = time.perf_counter()

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        # After Lightning restored the loop state, current_epoch is the epoch to run next.
        if self.path.exists():
            with self.path.open() as handle:
                kept = [
                    row
                    for row in csv.DictReader(handle)
                    if int(row["epoch"]) < trainer.current_epoch
                ]
            self._write(kept)

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        row = {
            "epoch": trainer.current_epoch,
            "seconds": round(time.perf_counter() - self.started, 2),
        }
        row["lr"] = trainer.optimizers[0].param_groups[0]["lr"]
        for key, value in sorted(trainer.callback_metrics.items()):
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


def _split_pool(data: RunData, rows: np.ndarray, val_fraction: float, seed: int):
    """Hold out a fraction of the pool's subjects (grouped) for the validation loss."""
    subjects = np.array(sorted(data.cohort.table["subject_id"].iloc[rows].unique()))
    generator = np.random.default_rng(seed)
    count = int(round(val_fraction * len(subjects)))
    held_out = set(generator.permutation(subjects)[:count]) if count < len(subjects) else set()
    is_val = data.cohort.table["subject_id"].iloc[rows].isin(held_out).to_numpy()
    return rows[~is_val], rows[is_val]


def pool_batches(data: RunData, rows: np.ndarray) -> TensorBatches:
    """Pretraining batches: ``image`` and ``row``, the volumes' positions in the cohort (for
    methods that look up per-volume targets they prepared, such as residual maps)."""
    return TensorBatches(image=data.images(rows), row=torch.as_tensor(rows, dtype=torch.long))


def build_method(cfg: DictConfig, method: str) -> SSLMethod:
    """The method's module around a fresh ResNet18 of the configured width."""
    backbone = ResNet18(stage_widths(float(cfg.backbone.width_multiplier)))
    return get_method(method)(
        backbone, method_hparams(cfg, method), pretraining_settings(cfg, method)
    )


def run_pretraining(
    cfg: DictConfig,
    unit: PretrainingUnit,
    data: RunData,
    log: Callable[[str], None] = print,
) -> Path:
    """Pretrain one unit (resuming from its last checkpoint if one exists); returns encoder.pt."""
    fingerprint = pretraining_fingerprint(cfg, unit, data)
    expected = config_hash(fingerprint)
    if is_finished(unit, expected):
        return unit.encoder_path
    settings = pretraining_settings(cfg, unit.method)
    apply_threads(cfg.runtime)
    device = resolve_device(cfg.runtime)
    pool_rows, pool_note = data.pretraining_pool(settings.pool)
    train_rows, val_rows = _split_pool(
        data, pool_rows, float(settings.val_fraction), int(settings.seed)
    )
    log(f"pretraining {unit.title} on {pool_note} ({len(train_rows)} train / {len(val_rows)} val)")

    pl.seed_everything(int(settings.seed), verbose=False)
    method = build_method(cfg, unit.method)
    batch_size = int(settings.batch_size)
    method.check_settings(min(batch_size, len(train_rows)))
    context = PretrainingContext(unit, data, cfg, train_rows, device, log)
    started = time.perf_counter()
    record = {
        "status": "running",
        "config_hash": expected,
        "config": fingerprint,
        "title": unit.title,
    }
    unit.directory.mkdir(parents=True, exist_ok=True)
    write_json_atomic(unit.record_path, record)
    method.prepare(context)
    prepare_module(method, cfg.runtime)

    checkpoints = unit.directory / "checkpoints"
    validate = len(val_rows) > 0
    callbacks: list[pl.Callback] = [
        epoch_checkpoints(checkpoints, "val_loss" if validate else None),
        LossTable(unit.directory / "losses.csv"),
    ]
    if validate and int(settings.patience) > 0:
        callbacks.append(EarlyStopping("val_loss", patience=int(settings.patience)))
    trainer = make_trainer(
        cfg.runtime,
        checkpoints,
        int(settings.max_epochs),
        callbacks,
        int(settings.max_steps),
        validate,
    )
    placement = str(cfg.runtime.cohort_on_device)
    train_loader = batch_loader(
        pool_batches(data, train_rows),
        batch_size,
        int(settings.seed),
        device=device,
        placement=placement,
    )
    val_loader = (
        batch_loader(
            pool_batches(data, val_rows),
            batch_size,
            0,
            shuffle=False,
            device=device,
            placement=placement,
        )
        if validate
        else None
    )
    last = checkpoints / "last.ckpt"
    if last.exists():
        log(f"{unit.title}: resuming from {last}")
    trainer.fit(method, train_loader, val_loader, ckpt_path=last if last.exists() else None)

    best_epoch = None
    if validate and callbacks[0].best_model_path:
        best = torch.load(callbacks[0].best_model_path, map_location="cpu", weights_only=False)
        method.load_state_dict(best["state_dict"])
        best_epoch = int(best["epoch"])
    save_encoder(method.encoder, unit.encoder_path)
    method.export(context)
    record.update(
        status="done",
        epochs=trainer.current_epoch,
        best_epoch=best_epoch,
        best_val_loss=float(callbacks[0].best_model_score) if best_epoch is not None else None,
        stages=context.stages_used,
        notes=context.notes,
        pool=pool_note,
        backbone=method.encoder.description,
        seconds=round(time.perf_counter() - started, 1),
        versions=versions(),
    )
    write_json_atomic(unit.record_path, record)
    shutil.rmtree(checkpoints, ignore_errors=True)
    log(f"pretrained {unit.title} in {record['seconds']:.0f} s -> {unit.encoder_path}")
    return unit.encoder_path
