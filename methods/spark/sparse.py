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

from benchmark.nn.backbone import OneVoxelAwareConv3d


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


class SparseConv3d(_Sparse, OneVoxelAwareConv3d):
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
        w = self.context.active(x.shape[2:]).to(torch.float32)  # [B, 1, D, H, W]
        values = x.to(torch.float32) if x.dtype in (torch.float16, torch.bfloat16) else x
        n = w.sum()  # active voxels in the batch, a device tensor
        weight = self.weight if self.affine else torch.ones_like(values[0, :, 0, 0, 0])
        bias = self.bias if self.affine else torch.zeros_like(weight)
        # torch's rule: batch statistics in training or when no running statistics are kept.
        if self.training or self.running_mean is None or self.running_var is None:
            out, mean, var = _MaskedBatchNorm.apply(values, w, n, weight, bias, self.eps)
            if self.training and self.track_running_stats:
                self._update_running_statistics(mean, var, n)
            return out.to(x.dtype)
        scale = torch.rsqrt(self.running_var.to(values.dtype) + self.eps) * weight
        shift = bias - self.running_mean.to(values.dtype) * scale
        return (torch.addcmul(_channels(shift), values, _channels(scale)) * w).to(x.dtype)

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


class _MaskedBatchNorm(torch.autograd.Function):
    """``w * (weight * (x - mean) / sqrt(var + eps) + bias)`` with the masked batch moments of
    ``x`` over the active voxels ``w``, and BatchNorm's backward restricted to them, by hand:
    ``dx = w * weight / sqrt(var + eps) * (g - (sum(g) + xhat * sum(g * xhat)) / n)`` with
    ``g = w * dy``. Autograd's graph of the same forward took about twice as many passes over
    the map (on the 2-core CPU the stem's masked BatchNorm, 32 x 16 x 16^3, went from 32 to
    13 ms forward and backward). Returns the output and the (non-differentiable) moments.
    """

    @staticmethod
    def forward(ctx, x, w, n, weight, bias, eps):
        dims, count = (0, 2, 3, 4), n.clamp_min(1)
        mean = (x * w).sum(dims) / count
        centred = x - _channels(mean)
        var = centred.square().mul_(w).sum(dims) / count
        inverse_std = torch.rsqrt(var + eps)
        normalised = centred.mul_(_channels(inverse_std))  # xhat, in place of the centred map
        out = torch.addcmul(_channels(bias), normalised, _channels(weight)).mul_(w)
        ctx.save_for_backward(normalised, w, count, weight, inverse_std)
        ctx.mark_non_differentiable(mean, var)
        return out, mean, var

    @staticmethod
    def backward(ctx, grad_out, _grad_mean, _grad_var):
        normalised, w, count, weight, inverse_std = ctx.saved_tensors
        dims = (0, 2, 3, 4)
        g = grad_out * w
        grad_bias = g.sum(dims)
        grad_weight = (g * normalised).sum(dims)
        grad_x = None
        if ctx.needs_input_grad[0]:
            correction = torch.addcmul(
                _channels(grad_bias / count), normalised, _channels(grad_weight / count)
            )
            grad_x = g.sub_(correction).mul_(_channels(weight * inverse_std)).mul_(w)
        return grad_x, None, None, grad_weight, grad_bias, None


def _channels(values: Tensor) -> Tensor:
    """[C] -> [1, C, 1, 1, 1], to broadcast over a [B, C, D, H, W] map."""
    return values.view(1, -1, 1, 1, 1)


SPARSE_LAYERS: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv3d: SparseConv3d,
    OneVoxelAwareConv3d: SparseConv3d,
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
