"""Sparse convolution emulated densely, for masked modelling with a plain CNN (SparK).

Tian et al., "Designing BERT for Convolutional Networks: Sparse and Hierarchical Masked
Modeling", ICLR 2023, section 3.1: a masked volume is a *sparse* set of visible voxels, and a
CNN run on it must not let the masked region leak in or grow. Dense layers emulate this when
every layer that mixes positions keeps its output zero wherever the layer's output has no
visible input, and BatchNorm takes its statistics over visible positions only.

``sparsify(model, context)`` converts a model in place: each ``Conv3d``, ``MaxPool3d`` and
``BatchNorm3d`` keeps its parameters, buffers and name (so the state dict still loads into the
plain model) and gets a sparse forward that reads the current mask from a ``MaskContext`` the
caller owns. Outside ``context.masking(...)`` the layers compute exactly their dense forward.

Which feature voxels are *active* (exist in the sparse tensor) at a coarser resolution: a
feature voxel at stride ``s`` is active when its footprint, the ``s^3`` input voxels it sits
on, holds at least one visible voxel. For strides up to the mask cell size this is the
nearest-neighbour upsampling of the cell mask (the official SparK, whose cell equals the total
stride, has only this case); for coarser strides it is the union of the cells below, which is
how a strided sparse convolution forms its output sites (e.g. MinkowskiEngine). The
alternative, "all cells visible", would empty the deep stages once several cells share a voxel
(at mask ratio 0.6, 64 cells under one voxel are all visible with probability 0.4^64).
Either way a voxel whose receptive field holds only masked voxels stays zero at every stage,
and an active voxel only ever carries information from visible voxels.

Layers that mix positions and are not converted (e.g. the global ``AdaptiveAvgPool3d`` after the
last stage) must not lie on the masked path.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MaskContext:
    """The visible voxels of the current masked forward pass, shared by one model's layers.

    The method that owns the model owns its context, so replicas (DDP) and compiled graphs never
    share mask state through a module-level global as the official SparK code does.
    """

    def __init__(self) -> None:
        self.visible: Tensor | None = None  # [B, 1, S, S, S] bool, or None: dense forward
        self._active: dict[tuple[int, ...], Tensor] = {}

    @contextmanager
    def masking(self, visible: Tensor) -> Iterator[None]:
        """Run the sparse layers on the visible voxels ``visible`` ([B, 1, S, S, S] bool)."""
        self.visible, self._active = visible, {}
        try:
            yield
        finally:
            self.visible, self._active = None, {}

    def active(self, size: torch.Size | tuple[int, ...]) -> Tensor:
        """[B, 1, *size] bool: feature voxels whose input footprint holds a visible voxel."""
        size = tuple(size)
        if size not in self._active:
            full = self.visible.shape[2:]
            if any(s % n for s, n in zip(full, size)):
                raise ValueError(f"a {tuple(size)} feature map does not tile a {tuple(full)} input")
            footprint = tuple(s // n for s, n in zip(full, size))
            pooled = F.max_pool3d(self.visible.to(torch.float32), footprint, footprint)
            self._active[size] = pooled > 0
        return self._active[size]


class _Sparse:
    """Mixin of the converted layers: ``context`` is the owner's ``MaskContext``."""

    context: MaskContext


class SparseConv3d(_Sparse, nn.Conv3d):
    """Conv3d whose output is zero at inactive voxels (submanifold-style sparse convolution)."""

    def forward(self, x: Tensor) -> Tensor:
        out = super().forward(x)
        return out if self.context.visible is None else out * self.context.active(out.shape[2:])


class SparseMaxPool3d(_Sparse, nn.MaxPool3d):
    """MaxPool3d whose output is zero at inactive voxels.

    Masked inputs are zero, so they never win a window after a ReLU (whose outputs are >= 0).
    """

    def forward(self, x: Tensor) -> Tensor:
        out = super().forward(x)
        return out if self.context.visible is None else out * self.context.active(out.shape[2:])


class SparseBatchNorm3d(_Sparse, nn.BatchNorm3d):
    """BatchNorm3d over active voxels only: statistics, running averages and output.

    The statistics are masked moments: with ``w`` the active mask and ``n`` its count over the
    batch, ``mean = sum(w x) / n`` and the biased ``var = sum(w (x - mean)^2) / n`` per channel,
    which is torch's BatchNorm applied to the ``N = n`` active voxels as ``[N, C]`` samples
    (momentum, the cumulative average when ``momentum`` is None, running statistics with the
    unbiased variance, eval mode, ``affine`` and ``track_running_stats`` as torch). Sums and a
    mask, not boolean indexing: the count stays on the device, so a CUDA step never waits for
    the host. Computed in float32 for reduced-precision inputs (autocast); the output has the
    input's dtype and is exactly zero at inactive voxels.

    Unlike torch, a batch of one active voxel is not refused (that would need the count on the
    host): its unbiased variance, hence ``running_var``, becomes NaN. A batch without active
    voxels leaves the running statistics unchanged, as torch does for an empty batch.
    """

    def forward(self, x: Tensor) -> Tensor:
        if self.context.visible is None:
            return super().forward(x)
        dims = (0, 2, 3, 4)
        w = self.context.active(x.shape[2:]).to(torch.float32)  # [B, 1, D, H, W]
        values = x.to(torch.float32) if x.dtype in (torch.float16, torch.bfloat16) else x
        n = w.sum()  # active voxels in the batch, a device tensor
        # torch's rule: batch statistics in training or when no running statistics are kept.
        if self.training or self.running_mean is None or self.running_var is None:
            mean = (values * w).sum(dims) / n.clamp_min(1)
            var = ((values - _channels(mean)) ** 2 * w).sum(dims) / n.clamp_min(1)
            if self.training and self.track_running_stats:
                self._update_running_statistics(mean.detach(), var.detach(), n)
        else:
            mean, var = self.running_mean.to(values.dtype), self.running_var.to(values.dtype)
        normalised = (values - _channels(mean)) * _channels(torch.rsqrt(var + self.eps))
        if self.affine:
            normalised = normalised * _channels(self.weight) + _channels(self.bias)
        return (normalised * w).to(x.dtype)

    @torch.no_grad()
    def _update_running_statistics(self, mean: Tensor, var: Tensor, n: Tensor) -> None:
        """torch's update, with ``1 / num_batches_tracked`` kept on the device."""
        factor: Tensor | float = 0.0
        if self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = self.momentum if self.momentum is not None else 1.0 / self.num_batches_tracked
        elif self.momentum is not None:
            factor = self.momentum
        factor = factor * (n > 0)  # an empty batch leaves the statistics unchanged
        if self.running_mean is not None:
            self.running_mean.mul_(1 - factor).add_(factor * mean.to(self.running_mean.dtype))
        if self.running_var is not None:
            unbiased = var * n / (n - 1)
            self.running_var.mul_(1 - factor).add_(factor * unbiased.to(self.running_var.dtype))


def _channels(values: Tensor) -> Tensor:
    """[C] -> [1, C, 1, 1, 1], to broadcast over a [B, C, D, H, W] map."""
    return values.view(1, -1, 1, 1, 1)


SPARSE_LAYERS: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv3d: SparseConv3d,
    nn.MaxPool3d: SparseMaxPool3d,
    nn.BatchNorm3d: SparseBatchNorm3d,
}


def sparsify(model: nn.Module, context: MaskContext) -> nn.Module:
    """Convert every Conv3d, MaxPool3d and BatchNorm3d of ``model`` in place; returns ``model``.

    Each layer keeps its identity, parameters, buffers and hooks (only its class changes), so
    ``model.state_dict()`` keeps its names and loads strict into the unconverted model.
    """
    for module in model.modules():
        sparse = SPARSE_LAYERS.get(type(module))
        if sparse is not None:
            module.__class__ = sparse
            module.context = context
    return model
