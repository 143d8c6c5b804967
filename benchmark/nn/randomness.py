"""A seeded random stream that survives checkpoint and resume, for Lightning modules."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import Tensor


class SeededStream(pl.LightningModule):
    """Mixin: ``self.rng`` is a CPU generator seeded with ``self.stream_seed`` at fit start.

    Its state is stored in every checkpoint and restored on resume, so an interrupted run draws
    the same views and masks as an uninterrupted one. In evaluation mode ``self.rng`` is a
    separate generator re-seeded at each validation epoch, so validation losses of different
    epochs are computed on the same views. CPU generators draw the same numbers on every device:
    draw small parameter tensors with it and move them to the batch's device.
    """

    stream_seed: int = 0
    _train_rng: torch.Generator | None = None
    _validation_rng: torch.Generator | None = None
    _restored_rng_state: Tensor | None = None

    @property
    def rng(self) -> torch.Generator:
        if self.training or self._validation_rng is None:
            if self._train_rng is None:
                self._train_rng = torch.Generator().manual_seed(self.stream_seed)
            return self._train_rng
        return self._validation_rng

    def on_fit_start(self) -> None:
        self._train_rng = torch.Generator().manual_seed(self.stream_seed)
        if self._restored_rng_state is not None:
            self._train_rng.set_state(self._restored_rng_state)
            self._restored_rng_state = None

    def on_validation_epoch_start(self) -> None:
        self._validation_rng = torch.Generator().manual_seed(self.stream_seed + 1)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self._train_rng is not None:
            checkpoint["ssl3d_rng_state"] = self._train_rng.get_state()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._restored_rng_state = checkpoint.get("ssl3d_rng_state")
