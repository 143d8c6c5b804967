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

    The active voxels of the batch are gathered into ``[N, C]`` and normalised as N samples by
    torch's own BatchNorm (momentum, running statistics, eval mode unchanged); inactive voxels
    stay zero.
    """

    def forward(self, x: Tensor) -> Tensor:
        if self.context.visible is None:
            return super().forward(x)
        where = self.context.active(x.shape[2:])[:, 0]  # [B, D, H, W]
        channels_last = x.movedim(1, -1)  # [B, D, H, W, C]
        normalised = super().forward(channels_last[where][..., None, None, None])  # [N, C, 1, 1, 1]
        out = torch.zeros_like(channels_last)
        out[where] = normalised.flatten(1).to(out.dtype)
        return out.movedim(-1, 1)


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
