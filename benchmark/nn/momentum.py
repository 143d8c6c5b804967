"""Momentum (EMA) copies of a method's modules: BYOL's target network, MoCo's key encoder.

A method keeps ``self.target = MomentumCopy(self, ["backbone", "projection"])`` and, after every
optimiser step, moves the copies towards its online modules::

    def on_train_batch_end(self, outputs, batch, batch_index):
        self.target.update_from(self, scheduled_momentum(self, start, end))

BatchNorm statistics. lightly's ``update_momentum`` averages parameters only (BatchNorm's
weight and bias included), not the running-mean/variance buffers. The copies are left in
training mode with the rest of the module, so during training they normalise with the
statistics of the batch they see, and their running buffers follow their own batches. That is
what BYOL's official code does: the target network is applied with ``is_training=True`` and
keeps its own BatchNorm state, updated by its own forward passes, while only its parameters are
averaged (google-deepmind/deepmind-research, byol/byol_experiment.py). The running buffers
matter only where a copy runs in evaluation mode: validation losses, and an exported target.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import pytorch_lightning as pl
import torch
from lightly.models.utils import deactivate_requires_grad
from lightly.utils.scheduler import cosine_schedule
from torch import nn

from benchmark.errors import MethodConfigError


class MomentumCopy(nn.ModuleDict):
    """Frozen copies of ``method``'s modules named ``names``, moved towards them by EMA.

    Only the copies are registered here (under the same names); the online modules are looked
    up by name in ``update_from``, so no parameter is registered twice.
    """

    def __init__(self, method: nn.Module, names: Sequence[str]):
        copies = {name: copy.deepcopy(getattr(method, name)) for name in names}
        for module in copies.values():
            deactivate_requires_grad(module)
        super().__init__(copies)

    @torch.no_grad()
    def update_from(self, method: nn.Module, momentum: float) -> None:
        """``copy = momentum * copy + (1 - momentum) * online`` for every parameter."""
        for name, target in self.items():
            move_towards(target, getattr(method, name), momentum)


@torch.no_grad()
def move_towards(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """``target = momentum * target + (1 - momentum) * online`` for every parameter, as lightly's
    ``update_momentum`` but in two multi-tensor operations: lightly allocates two new tensors
    per parameter and step, and on a GPU launches three kernels per parameter."""
    copies, onlines = list(target.parameters()), list(online.parameters())
    if len(copies) != len(onlines):
        raise ValueError(
            f"a momentum copy has {len(copies)} parameters, its online module {len(onlines)}"
        )
    torch._foreach_mul_(copies, momentum)
    torch._foreach_add_(copies, onlines, alpha=1 - momentum)


def scheduled_momentum(method: pl.LightningModule, start: float, end: float) -> float:
    """The momentum for the optimiser step that just finished (call it in ``on_train_batch_end``).

    Cosine from ``start`` to ``end`` over the real number of optimiser steps of this run, as
    BYOL's tau = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2 (Grill et al. 2020, section 3.2);
    ``start == end`` gives a constant momentum (MoCo). Lightning has already counted the
    finished step in ``global_step``, hence the ``- 1``.
    """
    total = max(1, int(method.trainer.estimated_stepping_batches))
    return cosine_schedule(max(0, method.global_step - 1), total, start, end)


def check_momentum(method: str, start: float, end: float) -> None:
    """Raise ``MethodConfigError`` unless ``0 <= start <= end <= 1``."""
    if not 0 <= start <= end <= 1:
        raise MethodConfigError(
            f"{method}: momentum_start ({start}) and momentum_end ({end}) must satisfy "
            f"0 <= momentum_start <= momentum_end <= 1; set method.{method}.momentum_start "
            f"and method.{method}.momentum_end (1 means the copy never moves)"
        )
