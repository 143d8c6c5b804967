"""Where and how training runs: device, precision, memory format, Lightning trainers.

Pretraining may run data-parallel on ``runtime.devices`` devices of each of
``runtime.num_nodes`` nodes (Lightning's DDP). Every rank is a process running the same
command: Lightning starts the others on one node (re-running the command), ``srun`` or
``torchrun`` start them on a cluster. ``process_ranks`` tells a process which rank it is before
any process group exists, so that only rank 0 writes files. Evaluation cells always run on one
device.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from pytorch_lightning.callbacks import Checkpoint, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger
from pytorch_lightning.strategies import DDPStrategy
from torch import nn

from benchmark.datasets.batches import set_loader_epoch
from benchmark.errors import RuntimeSettingError
from benchmark.nn.backbone import ResNet18
from benchmark.results import UnloadableFileError, load_plain, require_inside, set_aside

# Lightning's per-trainer banners ("GPU available: ...") would repeat for every grid cell.
for _name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
    logging.getLogger(_name).setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
warnings.filterwarnings("ignore", message=".*is a non-tensor.*")
warnings.filterwarnings("ignore", message=".*`validation_step` but have no `val_dataloader`.*")
# Lightning 2.6 on torch 2.14 warns about its own pytree use on every fit; not ours to fix.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
# After a data-parallel pretraining the process group stays up, and Lightning then asks every
# single-device trainer (evaluation cells) to sync its logged values, which it need not.
warnings.filterwarnings("ignore", message=r".*when logging on epoch level in distributed setting.*")
# Losses are logged once per epoch (on_epoch), so Lightning's step-logging interval is moot.
warnings.filterwarnings("ignore", message=r".*is smaller than the logging interval.*")
# A cell's work folder holds its checkpoints and the logger's logs/ side by side, and a resumed
# training finds its own checkpoints: which one is read is resume_checkpoint's decision.
warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")


def resolve_device(runtime: DictConfig) -> torch.device:
    """``runtime.device``: ``auto`` takes the GPU when there is one."""
    requested = runtime.device
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeSettingError(
            "runtime.device=cuda, but torch finds no CUDA GPU; use auto or cpu"
        )
    if requested not in ("cpu", "cuda"):
        raise RuntimeSettingError(f"runtime.device must be auto, cpu or cuda, got {requested!r}")
    return torch.device(requested)


@dataclass(frozen=True)
class Ranks:
    """This process's place among the ``world_size`` processes of a data-parallel pretraining."""

    world_size: int = 1
    global_rank: int = 0
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and logs."""
        return self.global_rank == 0


def process_ranks(runtime: DictConfig) -> Ranks:
    """The ranks of this process for ``runtime.devices`` x ``runtime.num_nodes`` processes.

    Read from the environment its launcher set: ``torchrun`` (``RANK``, ``LOCAL_RANK``),
    ``srun`` (``SLURM_PROCID``, ``SLURM_LOCALID``) or Lightning, which starts the other
    processes of a node with ``LOCAL_RANK`` and ``NODE_RANK``; none of these = rank 0.
    """
    devices, nodes = int(runtime.devices), int(runtime.num_nodes)
    if devices < 1 or nodes < 1:
        raise RuntimeSettingError(
            f"runtime.devices ({devices}) and runtime.num_nodes ({nodes}) must be at least 1"
        )
    world_size = devices * nodes
    if world_size == 1:
        return Ranks()
    environment = os.environ
    local = environment.get("LOCAL_RANK", environment.get("SLURM_LOCALID", "0"))
    default_global = int(environment.get("NODE_RANK", "0")) * devices + int(local)
    global_rank = environment.get("RANK", environment.get("SLURM_PROCID", default_global))
    return Ranks(world_size, int(global_rank), int(local))


def training_device(runtime: DictConfig, ranks: Ranks) -> torch.device:
    """``resolve_device`` for one rank: on GPUs, the rank's own GPU of its node."""
    device = resolve_device(runtime)
    if device.type == "cuda" and ranks.world_size > 1:
        return torch.device("cuda", ranks.local_rank)
    return device


def resolve_precision(runtime: DictConfig, device: torch.device) -> str:
    """``auto``: bf16 autocast on GPUs that support it, full precision otherwise."""
    precision = str(runtime.precision)
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16-mixed"
        return "16-mixed" if device.type == "cuda" else "32-true"
    if precision in ("32", "32-true"):
        return "32-true"
    if precision not in ("bf16-mixed", "16-mixed"):
        raise RuntimeSettingError(
            f"runtime.precision must be auto, 32, bf16-mixed or 16-mixed, got {precision!r}"
        )
    if device.type == "cpu":
        raise RuntimeSettingError(
            f"runtime.precision={precision} on the CPU: torch's CPU autocast of the 3D "
            "convolutions' backward pass returned corrupt gradients at random here (1e33 or "
            "NaN, tests/training/test_fast_path.py); use runtime.precision=auto or 32 on the CPU"
        )
    return precision


def numerics(runtime: DictConfig) -> dict[str, object]:
    """The settings that change a result's last bits, for result fingerprints: the resolved
    precision, the device kind (``cpu`` or the GPU's name), torch's CPU threads and whether the
    ResNet18 is compiled (inductor sums in another order: docs/perf.md)."""
    device = resolve_device(runtime)
    kind = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    threads = int(runtime.threads) if runtime.threads else torch.get_num_threads()
    return {
        "precision": resolve_precision(runtime, device),
        "device": kind,
        "threads": threads,
        "compiled": bool(runtime.compile),
    }


def apply_host_settings(runtime: DictConfig) -> None:
    """``runtime.threads`` (the number of CPU threads torch uses; null leaves torch's choice)
    and ``runtime.keep_host_memory`` (``keep_freed_host_memory``) for this process."""
    if runtime.threads:
        torch.set_num_threads(int(runtime.threads))
    if runtime.keep_host_memory:
        keep_freed_host_memory()


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_LARGEST_HEAP_BLOCK = 32 * 2**20  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit


def keep_freed_host_memory() -> None:
    """Let glibc keep freed blocks of up to 32 MiB for reuse instead of returning them.

    torch's CPU allocator does not cache: every tensor of a step is a fresh ``malloc``, and by
    default glibc serves large ones with ``mmap`` and trims freed heap back to the system, so
    each step pays page faults and zeroing for memory it had a moment ago. Keeping it made a
    quarter-width 32^3 ResNet18 training step about 1.6x faster and a batch of contrastive views
    about 2x faster on the 2-core build machine (``ssl3d perf`` measures it against default
    settings). The cost: the process's resident memory stays at its high-water mark.
    A no-op where the C library has no ``mallopt`` (not glibc).
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, _LARGEST_HEAP_BLOCK)
    mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)


def prepare_module(module: nn.Module, runtime: DictConfig) -> nn.Module:
    """channels_last_3d weights (on the 2-core build machine a quarter-width 32^3 ResNet18
    step took 0.88x the time at batch 32 and 64), ``runtime.fused_optimizer``
    for the optimiser the module builds (``fused_optimizer``) and, when ``runtime.compile`` is
    on, every ResNet18 inside compiled in place (``nn.Module.compile`` keeps the parameter
    names, so checkpoints and the exported encoder are unchanged)."""
    module.fused_optimizer = bool(runtime.fused_optimizer)
    if runtime.channels_last:
        module.to(memory_format=torch.channels_last_3d)
    if runtime.compile:
        for part in module.modules():
            if isinstance(part, ResNet18):
                part.compile()
    return module


def show_progress(runtime: DictConfig) -> bool:
    """``runtime.progress_bar``: ``auto`` shows bars only on an interactive terminal."""
    if runtime.progress_bar == "auto":
        return sys.stderr.isatty()
    return bool(runtime.progress_bar)


# The packages each ``runtime.logger`` needs beyond Lightning (any one of them), and the extra
# of setup.cfg that installs them.
_LOGGER_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "mlflow": ("mlflow",)}


def check_logger(runtime: DictConfig) -> None:
    """``runtime.logger``'s package is installed; a ``RuntimeSettingError`` naming the pip
    command otherwise (checked before a run starts, not in its first training)."""
    name = str(runtime.logger)
    packages = _LOGGER_PACKAGES.get(name, ())
    if packages and not any(importlib.util.find_spec(package) for package in packages):
        raise RuntimeSettingError(
            f"runtime.logger={name} needs the {packages[0]} package, which is not installed: "
            f"`pip install ssl3d[{name}]` (or `pip install {packages[0]}`), or use "
            "runtime.logger=csv or none"
        )


def training_logger(runtime: DictConfig, folder: Path, title: str) -> Logger | bool:
    """``runtime.logger``: Lightning's logger for one training, writing ``folder/logs/`` (a
    new ``version_<n>`` there for each start or resume), or False for ``none``.

    ``csv`` writes ``metrics.csv`` (every logged value, one row per epoch, flushed at each so
    it can be watched), ``tensorboard`` event files for ``tensorboard --logdir``, ``mlflow``
    a run named ``title`` in the experiment ``ssl3d`` at ``MLFLOW_TRACKING_URI`` (a file store
    in ``folder/logs/mlruns`` without one). Lightning imports tensorboard or mlflow only when
    such a logger is made. Loggers only read what training logs: no result depends on this
    setting, and no config hash includes it.
    """
    check_logger(runtime)
    name = str(runtime.logger)
    if name == "csv":
        return CSVLogger(folder, name="logs", flush_logs_every_n_steps=1)
    if name == "tensorboard":
        return TensorBoardLogger(folder, name="logs", default_hp_metric=False)
    if name == "mlflow":
        return MLFlowLogger(
            experiment_name="ssl3d",
            run_name=title,
            tracking_uri=os.environ.get("MLFLOW_TRACKING_URI"),
            save_dir=str(folder / "logs" / "mlruns"),
        )
    return False


class SamplerEpoch(pl.Callback):
    """Tells the training batches' sampler the epoch about to run (``trainer.current_epoch``).

    Lightning passes its own count of processed epochs, which a checkpoint written at an
    epoch's end restores one short: a resumed run would replay the previous epoch's order of
    volumes. A resumed fit also draws its first epoch's batches before any epoch hook, so the
    caller sets that epoch itself (``resumed_epoch``). The order then depends only on (seed,
    epoch), resumed or not."""

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        set_loader_epoch(trainer.train_dataloader, trainer.current_epoch)


class LastCheckpoint(Checkpoint):
    """``last.ckpt`` at the end of every training epoch, whatever the validation loss does and
    with no validation at all, so a killed training resumes at its last finished epoch.

    Lightning's own ``save_last`` writes it only in an epoch in which a monitored checkpoint was
    saved (with a validation loss that stops improving, never again). Written to a temporary
    file and renamed, so a kill while writing leaves the previous epoch's file. A
    ``Checkpoint`` subclass: Lightning runs it after the other callbacks (the loss table, the
    best-checkpoint keeper), so the file holds their state of the same epoch.
    """

    def __init__(self, directory: Path):
        self.path = Path(directory) / "last.ckpt"

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        temporary = self.path.with_name(".last.ckpt.tmp")
        trainer.save_checkpoint(temporary)  # every rank calls it; rank 0 writes
        if trainer.is_global_zero:
            os.replace(temporary, self.path)


def epoch_checkpoints(directory: Path, monitor: str | None) -> list[Checkpoint]:
    """``last.ckpt`` after every epoch (for resume) and, with ``monitor``, ``best.ckpt`` of the
    epoch with its lowest value (the best-keeper first: ``best_model_path`` is read from it)."""
    last = LastCheckpoint(directory)
    if monitor is None:
        return [last]
    best = ModelCheckpoint(
        dirpath=directory,
        filename="best",
        save_last=False,
        save_top_k=1,
        monitor=monitor,
        save_on_train_epoch_end=True,
    )
    return [best, last]


# The paths a ModelCheckpoint callback's state records (Lightning restores them on resume; it
# loads best_model_path after training and may delete the others).
_RECORDED_PATHS = ("best_model_path", "kth_best_model_path", "last_model_path")


@dataclass(frozen=True)
class Resume:
    """Where a training starts: from ``checkpoint`` (written at the end of the epoch before
    ``epoch``) or, with none, at epoch 0. ``set_aside``: the checkpoints that could not be used,
    moved aside (``benchmark.results.set_aside`` entries)."""

    checkpoint: Path | None = None
    epoch: int = 0
    set_aside: tuple[dict[str, str], ...] = ()


def resume_checkpoint(folder: Path, owner: Path, fix: str, moves: bool = True) -> Resume:
    """Where the training whose checkpoints are in ``folder`` starts, checked before Lightning
    reads ``folder/last.ckpt`` (``fit(..., weights_only=True)``).

    ``last.ckpt``, any SLURM ``hpc_ckpt_*.ckpt`` Lightning might pick instead, and the
    checkpoints their callback states record (``best.ckpt``, read after training) must load as
    plain data. One that does not (torn, foreign, altered) is moved to ``owner/set-aside/``
    (``moves`` False: left for rank 0 to move) and not used: without a usable ``last.ckpt``
    the training starts at epoch 0. A checkpoint that lies outside ``folder`` (a link) or
    records a path outside it is hostile, not torn: a doctored state could have the best
    weights read from, or old checkpoints deleted at, any path. That is a ``UserError`` naming
    the file and saying what to do (``fix``).
    """
    last = folder / "last.ckpt"
    usable: dict[Path, dict] = {}
    unusable: dict[Path, str] = {}
    for path in [last, *sorted(folder.glob("hpc_ckpt_*.ckpt"))]:
        if not path.exists():
            continue
        require_inside(path, folder, fix)
        try:
            state = load_plain(path, fix)
            recorded = _recorded_paths(state, path, fix)
            if not isinstance(state.get("epoch"), int):
                raise UnloadableFileError(path, "it records no epoch", fix)
        except UnloadableFileError as error:
            unusable[path] = error.reason
            continue
        broken = _unusable_recorded(recorded, folder, path, fix, unusable)
        if broken:
            unusable[path] = f"the checkpoint it records, {broken}, cannot be used"
        else:
            usable[path] = state
    moved = tuple(set_aside(path, owner, why) for path, why in unusable.items() if moves)
    if last not in usable:
        return Resume(set_aside=moved)
    return Resume(last, usable[last]["epoch"] + 1, moved)


def _unusable_recorded(
    recorded: list[str], folder: Path, source: Path, fix: str, unusable: dict[Path, str]
) -> Path | None:
    """The first checkpoint ``source`` records that is missing or does not load as plain
    data (those that exist are added to ``unusable`` with why), or None when all are usable."""
    inside = [require_inside(path, folder, fix, source=source) for path in recorded]
    root, first = folder.resolve(), None
    for path in dict.fromkeys(folder / path.relative_to(root) for path in inside):
        if path in unusable:
            first = first or path
            continue
        try:
            load_plain(path, fix)
        except UnloadableFileError as error:
            if path.exists():
                unusable[path] = error.reason
            first = first or path
    return first


def _recorded_paths(state: object, path: Path, fix: str) -> list[str]:
    """The checkpoint paths that the callback states of a loaded checkpoint record."""

    def refuse(what: str) -> UnloadableFileError:
        return UnloadableFileError(path, f"{what}; it is not a checkpoint ssl3d wrote", fix)

    callbacks = state.get("callbacks", {}) if isinstance(state, dict) else None
    if not isinstance(callbacks, dict):
        raise refuse("it holds no Lightning callback states")
    recorded: list[str] = []
    for callback in callbacks.values():
        if not isinstance(callback, dict):
            continue
        models = callback.get("best_k_models", {})
        if not isinstance(models, dict):
            raise refuse(f"its best_k_models is a {type(models).__name__}")
        for value in [*(callback.get(key) for key in _RECORDED_PATHS), *models]:
            if value is None or (isinstance(value, str) and not value):
                continue
            if not isinstance(value, str):
                raise refuse(f"it records a {type(value).__name__} as a checkpoint path")
            recorded.append(value)
    return recorded


def best_checkpoint(checkpoints: ModelCheckpoint, folder: Path, fix: str) -> dict:
    """The best checkpoint a training saved (``checkpoints.best_model_path``, which a resumed
    training took from ``last.ckpt``), loaded as plain data from inside ``folder`` only."""
    path = require_inside(checkpoints.best_model_path, folder, fix)
    state = load_plain(path, fix)
    if not isinstance(state, dict) or "state_dict" not in state or "epoch" not in state:
        raise UnloadableFileError(path, "it is not a checkpoint ssl3d wrote", fix)
    return state


def data_parallel_strategy(device: torch.device) -> DDPStrategy:
    """Lightning's DDP: NCCL between GPUs, gloo between CPU processes (so tests can run it)."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    return DDPStrategy(process_group_backend=backend)


def make_trainer(
    runtime: DictConfig,
    checkpoint_dir: Path,
    max_epochs: int,
    callbacks: list[pl.Callback],
    max_steps: int = -1,
    validate: bool = True,
    data_parallel: bool = False,
    sync_batchnorm: bool = False,
    logger: Logger | bool = False,
) -> pl.Trainer:
    """A Lightning trainer for one pretraining or one evaluation cell.

    ``logger``: where the logged losses also go (``training_logger``; False: only to the
    callbacks, such as the checkpoints and the loss table).

    ``data_parallel`` (pretraining only) trains on ``runtime.devices`` x ``runtime.num_nodes``
    processes with DDP when that is more than one; ``sync_batchnorm`` then converts BatchNorm
    to ``SyncBatchNorm``, which torch provides on GPUs only.
    """
    device = resolve_device(runtime)
    ranks = process_ranks(runtime) if data_parallel else Ranks()
    distributed = {"devices": 1}
    if ranks.world_size > 1:
        distributed = {
            "devices": int(runtime.devices),
            "num_nodes": int(runtime.num_nodes),
            "strategy": data_parallel_strategy(device),
            "sync_batchnorm": sync_batchnorm and device.type == "cuda",
        }
    return pl.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        **distributed,
        precision=resolve_precision(runtime, device),
        max_epochs=max_epochs,
        max_steps=max_steps,
        callbacks=[SamplerEpoch(), *callbacks],
        enable_checkpointing=any(isinstance(c, Checkpoint) for c in callbacks),
        default_root_dir=checkpoint_dir,
        logger=logger,
        enable_progress_bar=show_progress(runtime),
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=1.0 if validate else 0,
        use_distributed_sampler=False,
    )
