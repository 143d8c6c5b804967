"""Pretraining of one method: stages, Lightning training with checkpoints, encoder export.

A pretraining *unit* is one method pretrained once per run (``pretraining_scope = "run"``),
once per (seed, fold) for methods whose preparation uses a fold's labelled data (``"fold"``,
e.g. the residual method's autoencoder trained on that fold's normal subjects), or once per
(seed, fold, label fraction) for methods that may use only the labels of the fraction being
evaluated (``"fraction"``). A method may choose its scope from its settings
(``SSLMethod.scope``).
Each unit writes, under its directory::

    encoder.pt      plain state dict of the ResNet18 (loads strict into MONAI's resnet18)
    losses.csv      per-epoch training and validation losses
    pretrain.json   status, config hash, resolved settings, timings, versions
    stages/         cached products of the method's ``prepare`` step
    checkpoints/    last and best Lightning checkpoints while running (removed when done)

Data-parallel pretraining (``runtime.devices`` x ``runtime.num_nodes`` > 1) runs this same
function in every rank's process. ``pretrain.batch_size`` stays the global batch: each rank
trains on its ``1 / world_size`` share of every batch, from its own shard of each epoch
(``benchmark/batches.py``), so the steps per epoch, the learning-rate schedule and the methods'
queues mean what they mean on one device. Rank 0 alone writes files and logs; it builds the
method's stages, which the other ranks wait for and load.
"""

from __future__ import annotations

import csv
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint

from benchmark.backbone import ResNet18, save_encoder, stage_widths
from benchmark.batches import TensorBatches, batch_loader
from benchmark.config import config_hash, method_hparams, pretraining_settings
from benchmark.method import SSLMethod
from benchmark.registry import get_method
from benchmark.results import read_json, versions, write_json_atomic
from benchmark.rundata import RunData
from benchmark.runtime import (
    Ranks,
    RuntimeSettingError,
    apply_host_settings,
    epoch_checkpoints,
    make_trainer,
    prepare_module,
    process_ranks,
    training_device,
)

STAGE_POLL_SECONDS = 2.0


@dataclass(frozen=True)
class PretrainingUnit:
    """One pretraining: a method, and for fold- or fraction-scoped methods the (seed, fold)
    and label fraction it serves."""

    method: str
    directory: Path
    seed: int | None = None
    fold: int | None = None
    fraction: float | None = None

    @property
    def title(self) -> str:
        if self.fold is None:
            return self.method
        at = "" if self.fraction is None else f", fraction {self.fraction:g}"
        return f"{self.method} (seed {self.seed}, fold {self.fold}{at})"

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
    scope = cls.scope(method_hparams(cfg, method))
    if scope == "run":
        return [PretrainingUnit(method, root)]
    folds = [(int(s), fold) for s in cfg.splits.seeds for fold in range(int(cfg.splits.folds))]
    if scope == "fold":
        return [PretrainingUnit(method, root / f"seed{s}" / f"fold{k}", s, k) for s, k in folds]
    if scope == "fraction":
        return [
            PretrainingUnit(method, root / f"seed{s}" / f"fold{k}" / f"f{f:g}", s, k, float(f))
            for s, k in folds
            for f in cfg.splits.fractions
        ]
    raise ValueError(f"{cls.__name__}.scope must give 'run', 'fold' or 'fraction', not {scope!r}")


def unit_for(
    units: list[PretrainingUnit], seed: int, fold: int, fraction: float
) -> PretrainingUnit | None:
    """The unit whose encoder an evaluation cell of (seed, fold, fraction) starts from."""
    for unit in units:
        if unit.fold is None or (unit.seed, unit.fold) == (seed, fold):
            if unit.fraction is None or abs(unit.fraction - fraction) < 1e-9:
                return unit
    return None


@dataclass
class PretrainingContext:
    """What a method's ``prepare`` step may use, and the stage cache it stores results in.

    ``notes`` collects facts the method reports about its stages (for example how well the
    residual method's targets localise anomalies); they are written into ``pretrain.json``.
    Under data-parallel pretraining only the main rank (``builds_stages``) builds and writes a
    stage; the others wait for its file, so no two processes build or write the same stage.
    """

    unit: PretrainingUnit
    data: RunData
    config: DictConfig
    pool_rows: np.ndarray
    device: torch.device
    log: Callable[[str], None] = print
    stages_used: list[str] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)
    builds_stages: bool = True

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
        while not self.builds_stages and not path.exists():
            time.sleep(STAGE_POLL_SECONDS)
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
        rows = data.training_rows(unit.seed, unit.fold, unit.fraction or 1.0)
        fingerprint["data"]["fold_training"] = data.subjects_fingerprint(rows)
    if unit.fraction is not None:  # only fraction-scoped units: other hashes stay as they were
        fingerprint["fraction"] = unit.fraction
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

    On resume, rows of epochs after the restored checkpoint are dropped first. Under
    data-parallel training rank 0 writes it; the losses are already means over all ranks.
    """

    def __init__(self, path: Path):
        self.path = path
        self.started = time.perf_counter()

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        # After Lightning restored the loop state, current_epoch is the epoch to run next.
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
    if is_finished(unit, expected):
        return unit.encoder_path
    settings = pretraining_settings(cfg, unit.method)
    apply_host_settings(cfg.runtime)
    ranks = process_ranks(cfg.runtime)
    check_launch(cfg, ranks)
    log = log if ranks.is_main else _ignore
    device = training_device(cfg.runtime, ranks)
    pool_rows, pool_note = data.pretraining_pool(settings.pool)
    train_rows, val_rows = _split_pool(
        data, pool_rows, float(settings.val_fraction), int(settings.seed)
    )
    log(f"pretraining {unit.title} on {pool_note} ({len(train_rows)} train / {len(val_rows)} val)")

    pl.seed_everything(int(settings.seed), verbose=False)
    method = build_method(cfg, unit.method)
    batch_size = int(settings.batch_size)
    method.check_settings(min(batch_size, len(train_rows)))
    share = rank_batch_size(batch_size, ranks) if ranks.world_size > 1 else batch_size
    context = PretrainingContext(
        unit, data, cfg, train_rows, device, log, builds_stages=ranks.is_main
    )
    started = time.perf_counter()
    record = {
        "status": "running",
        "config_hash": expected,
        "config": fingerprint,
        "title": unit.title,
        "pool": pool_note,
    }
    if ranks.is_main:
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
        data_parallel=True,
        sync_batchnorm=method.sync_batchnorm,
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
    last = checkpoints / "last.ckpt"
    if last.exists():
        log(f"{unit.title}: resuming from {last}")
    trainer.fit(method, train_loader, val_loader, ckpt_path=last if last.exists() else None)
    if ranks.is_main:
        _finish_unit(unit, method, trainer, callbacks[0], context, record, started)
        log(f"pretrained {unit.title} in {record['seconds']:.0f} s -> {unit.encoder_path}")
    trainer.strategy.barrier()  # every rank returns once encoder.pt exists
    return unit.encoder_path


def _finish_unit(
    unit: PretrainingUnit,
    method: SSLMethod,
    trainer: pl.Trainer,
    checkpoints: ModelCheckpoint,
    context: PretrainingContext,
    record: dict,
    started: float,
) -> None:
    """Rank 0 after training: the best weights exported, the record done, checkpoints gone."""
    best_epoch = None
    if checkpoints.monitor and checkpoints.best_model_path:
        best = torch.load(checkpoints.best_model_path, map_location="cpu", weights_only=False)
        method.load_state_dict(best["state_dict"])
        best_epoch = int(best["epoch"])
    save_encoder(method.encoder, unit.encoder_path)
    method.export(context)
    record.update(
        status="done",
        epochs=trainer.current_epoch,
        best_epoch=best_epoch,
        best_val_loss=float(checkpoints.best_model_score) if best_epoch is not None else None,
        stages=context.stages_used,
        notes=context.notes,
        backbone=method.encoder.description,
        seconds=round(time.perf_counter() - started, 1),
        versions=versions(),
    )
    write_json_atomic(unit.record_path, record)
    shutil.rmtree(checkpoints.dirpath, ignore_errors=True)
