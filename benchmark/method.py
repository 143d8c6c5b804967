"""``SSLMethod``: the base class of every method plugin (the plugin API).

It owns the training plumbing (optimiser and schedule, random views, logging, non-finite loss
detection, resumable random state) so that a method file states only what makes the method
different: its heads, its views and its loss (solo-learn style). A plugin looks like::

    @register_method("simclr")
    class SimCLR(SSLMethod):
        '''SimCLR: contrast two views with NT-Xent (Chen et al., ICML 2020).'''

        def __init__(self, backbone, settings, training):
            super().__init__(backbone, settings, training)
            self.projection = SimCLRProjectionHead(backbone.feature_dim, 512, 512)

        def pretraining_loss(self, batch):
            first, _ = self.augment(batch["image"])
            ...
            return {"loss": loss}
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from lightly.models.utils import get_weight_decay_parameters
from lightly.utils.scheduler import CosineWarmupScheduler
from omegaconf import DictConfig
from torch import Tensor

from benchmark.context import PretrainingContext
from benchmark.datasets.views import Views
from benchmark.errors import MethodConfigError
from benchmark.nn.backbone import ResNet18
from benchmark.nn.optimizers import build_optimizer, fused_optimizer
from benchmark.nn.randomness import SeededStream

__all__ = [
    "MethodConfigError",
    "NonFiniteLossError",
    "PretrainingContext",
    "SSLMethod",
    "TwoViewMethod",
]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the unit fails with this record."""


class SSLMethod(SeededStream):
    """A self-supervised method on the shared 3D ResNet18.

    Subclasses implement ``pretraining_loss``; they may override ``prepare`` (cached stages
    such as an autoencoder), ``pretraining_rows`` (train on other volumes than the pool),
    ``check_settings`` (reject impossible settings early), ``export`` (more files next to
    ``encoder.pt``) and the Lightning hooks (for example an EMA update in
    ``on_train_batch_end``).

    Class attributes that tell the harness what a method is: ``role`` (``method``, or a
    ``positive_control`` that uses labels beyond the cell, or a ``baseline`` that learns
    nothing; tables mark both and list them after the methods, never bold), ``protocols`` (the
    evaluation protocols it may be evaluated by; None = all), ``frozen_features`` (a method
    whose "encoder" is a fixed function of the volume rather than a ResNet18) and
    ``shared_encoder`` (its cells evaluate an encoder file made elsewhere).

    Args:
        backbone: the shared ResNet18; what fine-tuning receives is ``self.encoder``.
        settings: the method's own hyper-parameters (``configs/methods/<name>.yaml``).
        training: the pretraining settings (optimiser, lr, epochs, batch size, seed).
    """

    name: ClassVar[str] = ""
    reference: ClassVar[str] = ""
    config_file: ClassVar[str | None] = None
    pretraining_scope: ClassVar[str] = "run"  # run | fold | fraction (benchmark/training/units.py)
    needs_pretraining: ClassVar[bool] = True
    role: ClassVar[str] = "method"  # method | positive_control | baseline
    protocols: ClassVar[tuple[str, ...] | None] = None  # evaluation protocols; None = all
    # The cells start from the encoder file that ``finetune.encoder`` names, made elsewhere
    # (the ``external`` method), instead of a pretraining of their own.
    shared_encoder: ClassVar[bool] = False
    # Under data-parallel pretraining every rank holds a share of the batch; SyncBatchNorm
    # normalises over the whole batch, as one device would (SimCLR, BYOL and their successors
    # train with it). A method whose BatchNorm layers cannot be swapped for torch's sets False.
    sync_batchnorm: ClassVar[bool] = True

    def __init__(self, backbone: ResNet18, settings: DictConfig, training: DictConfig):
        super().__init__()
        self.backbone = backbone
        self.settings = settings
        self.training_settings = training
        self.views = Views.from_config(settings.get("views"))
        self.stream_seed = int(training.seed)
        self._saw_nonfinite_loss: Tensor | None = None

    @classmethod
    def summary(cls) -> str:
        """The first line of the class docstring (shown by ``ssl3d methods``)."""
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""

    @classmethod
    def display_name(cls, settings: DictConfig) -> str:
        """How tables and figures name the method run with ``settings`` (its own
        hyper-parameters): the registered name, unless a setting changes what the method is
        (SparK names its mask cell). Written into every cell file, so reports need no plugin."""
        return cls.name

    @classmethod
    def scope(cls, settings: DictConfig) -> str:
        """How often the method is pretrained (``pretraining_scope``); a method whose
        settings decide it (e.g. which labels its preparation may see) overrides this."""
        return cls.pretraining_scope

    @classmethod
    def frozen_features(cls, images: Tensor) -> Tensor | None:
        """Features ``[N, D]`` of volumes ``[N, 1, S, S, S]`` that the probe protocols use
        instead of a ResNet18's pooled features, for a method whose "encoder" is a fixed
        function (a baseline); None (the default): probe the method's encoder."""
        return None

    @property
    def encoder(self) -> ResNet18:
        """The backbone that fine-tuning receives (exported as ``encoder.pt``)."""
        return self.backbone

    # ---- what a method states ----------------------------------------------------------

    def check_settings(self, batch_size: int) -> None:
        """Raise ``MethodConfigError`` for settings that cannot work, before any training."""

    def require_batches_of(self, batch_size: int, minimum: int, because: str) -> None:
        """``MethodConfigError`` when batches hold fewer than ``minimum`` volumes (for
        ``check_settings``); ``because`` says what needs them."""
        if batch_size < minimum:
            raise MethodConfigError(
                f"{self.name} needs at least {minimum} volumes per batch ({because}), got "
                f"{batch_size}; raise pretrain.batch_size or add unlabelled volumes"
            )

    def prepare(self, context: PretrainingContext) -> None:
        """Compute what the method needs before training (cached with ``context.stage``)."""

    def pretraining_rows(self, context: PretrainingContext) -> tuple[np.ndarray, np.ndarray]:
        """Cohort rows of the volumes to train on and of those for the validation loss;
        called after ``prepare``. By default the unit's pretraining pool (``pool_rows``,
        ``pool_val_rows``); a method that trains on labelled volumes chooses its own."""
        return context.pool_rows, context.pool_val_rows

    def export(self, context: PretrainingContext) -> None:
        """Write files the method adds to ``encoder.pt`` (a decoder, a figure) into
        ``context.unit.directory``; called once after training, with the best weights."""

    def pretraining_loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Losses of one batch: ``loss`` is optimised, every other entry is logged.

        ``batch["image"]`` is ``[B, 1, S, S, S]`` on the training device, ``batch["index"]``
        the positions of those volumes in the pretraining pool and ``batch["row"]`` their
        positions in the cohort (to look up per-volume targets prepared by ``prepare``).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement pretraining_loss")

    # ---- helpers for methods -------------------------------------------------------------

    def augment(
        self, images: Tensor, targets: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """A random view of each volume (and the same spatial transform of ``targets``)."""
        return self.views(images, targets, generator=self.rng)

    @staticmethod
    def embedding_std(embeddings: Tensor) -> Tensor:
        """Mean per-dimension std of L2-normalised embeddings: 0 means collapse, and
        ``1/sqrt(dim)`` is what spread-out embeddings give (Chen & He, SimSiam, 2021)."""
        return F.normalize(embeddings.detach().float(), dim=1).std(dim=0).mean()

    # ---- plumbing ------------------------------------------------------------------------

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self._saw_nonfinite_loss = torch.zeros((), dtype=torch.bool, device=self.device)

    def on_train_epoch_start(self) -> None:
        """Under data-parallel training, a random stream per (rank, epoch).

        Ranks must not draw the same views for their different volumes, and checkpoints are
        written at epoch ends by rank 0 alone, so a stream that restarts at every epoch from
        (seed, rank, epoch) resumes exactly without storing every rank's state. One device
        keeps its single stream across epochs (``SeededStream``).
        """
        if self.trainer.world_size > 1:
            seed = (self.stream_seed * 1_000_003 + self.current_epoch) * 1_009 + self.global_rank
            self._train_rng = torch.Generator().manual_seed(seed)

    def _log_losses(self, losses: dict[str, Tensor], stage: str, batch_size: int) -> None:
        # sync_dist: the epoch's value is the mean over all ranks' volumes (equal shards), so
        # losses.csv, checkpointing and early stopping see the same number on every rank.
        for key, value in losses.items():
            self.log(
                f"{stage}_{key}",
                value.detach().float(),
                on_step=False,
                on_epoch=True,
                prog_bar=key == "loss",
                batch_size=batch_size,
                sync_dist=True,
            )

    def training_step(self, batch: dict[str, Tensor], batch_index: int) -> dict[str, Tensor]:
        losses = self.pretraining_loss(batch)
        loss = losses["loss"]
        # Accumulated on the device and checked once per epoch: no host sync per step.
        self._saw_nonfinite_loss |= ~torch.isfinite(loss.detach())
        self._log_losses(losses, "train", batch["image"].shape[0])
        # The step's other losses ride along (detached) for callbacks such as the tests' recorder.
        return {**{key: value.detach() for key, value in losses.items()}, "loss": loss}

    def validation_step(self, batch: dict[str, Tensor], batch_index: int) -> None:
        self._log_losses(self.pretraining_loss(batch), "val", batch["image"].shape[0])

    def on_train_epoch_end(self) -> None:
        # Decided together: a rank that stopped alone would leave the others waiting.
        if self.trainer.strategy.reduce_boolean_decision(bool(self._saw_nonfinite_loss), all=False):
            raise NonFiniteLossError(
                f"{self.name}: the pretraining loss became NaN or infinite in epoch "
                f"{self.current_epoch}; lower pretrain.lr or check the input data"
            )

    def configure_optimizers(self):
        """The configured optimiser, linear warm-up then cosine decay per optimiser step.

        The schedule length is the real number of steps of this run
        (``trainer.estimated_stepping_batches``), so it ends where training ends.
        """
        settings = self.training_settings
        decayed, not_decayed = get_weight_decay_parameters([self])
        groups = [
            {"params": decayed, "weight_decay": float(settings.weight_decay)},
            {"params": not_decayed, "weight_decay": 0.0},
        ]
        optimizer = build_optimizer(settings.optimizer, groups, settings, fused_optimizer(self))
        total_steps = max(1, int(self.trainer.estimated_stepping_batches))
        self.trainer.fit_loop.setup_data()  # so num_training_batches is known in step-bounded runs
        steps_per_epoch = max(1, int(self.trainer.num_training_batches))
        warmup_steps = min(total_steps - 1, int(settings.warmup_epochs) * steps_per_epoch)
        schedule = CosineWarmupScheduler(
            optimizer, warmup_epochs=warmup_steps, max_epochs=total_steps
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


class TwoViewMethod(SSLMethod):
    """A method that compares two random views of every volume (SimCLR and its successors).

    The shared part of SimCLR, BYOL, SimSiam, MoCo, Barlow Twins, VICReg and the as-released
    BYOL: two independent views per volume (``two_views``), each embedded by backbone and
    ``self.projection`` (``project``), and batches of at least two volumes, since their losses
    or BatchNorm layers take statistics over the batch (``batch_statistics`` says which).
    Subclasses build ``self.projection`` and state their loss.
    """

    batch_statistics: ClassVar[str] = "BatchNorm in its projector normalises over the batch"

    def check_settings(self, batch_size: int) -> None:
        self.require_batches_of(batch_size, 2, self.batch_statistics)

    def two_views(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Two independent random views of each volume, the first drawn first."""
        first, _ = self.augment(images)
        second, _ = self.augment(images)
        return first, second

    def project(self, view: Tensor) -> Tensor:
        """The projector's embedding of a view ``[B, D]``."""
        return self.projection(self.backbone(view))
