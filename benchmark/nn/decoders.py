"""A U-Net decoder on the shared ResNet18's feature maps, and the losses of volume prediction.

Shared by every method that predicts a volume from the backbone: the residual method of
Bhattacharya et al. (Int J CARS 2024), which predicts the autoencoder's residual map, and the
same paper's autoencoder and denoising-autoencoder baselines, which predict the (clean) input.
The decoder knows nothing of the trainer (lightly style). Its blocks are MONAI's ``TwoConv``
(two 3^3 convolutions, BatchNorm, ReLU), the blocks of MONAI's BasicUNet.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.nets.basic_unet import TwoConv
from torch import Tensor, nn

LOSSES = ("l1", "mse", "bce")


class UNetDecoder(nn.Module):
    """Predicts ``[B, out_channels, S, S, S]`` from the five maps of ``ResNet18.feature_maps``.

    The maps have strides 32, 16, 8, 4 and 2 (deepest first) and the widths ``w3, w2, w1, w0,
    w0`` of the backbone's stages. Starting at the deepest map, each block convolves the
    running map (concatenated, with ``skip_connections``, with the encoder map of its scale)
    and upsamples it trilinearly to the next map's size; at stride 2 a 1^3 convolution gives
    the output channels, which are upsampled to the input size (no activation: logits or
    intensities). Convolving before upsampling, as the decoder of the paper's reference code
    does, keeps every 3^3 convolution at the coarser of the two scales, the decoder costs about
    what the encoder does. Without skip connections the volume is decoded from the deepest map
    alone: a plain autoencoder, which cannot copy its input through a shallow skip.

    Args:
        widths: the backbone's four stage widths (``ResNet18.widths``).
        out_channels: channels of the predicted volume.
        skip_connections: concatenate the encoder maps (U-Net) or not (autoencoder).
    """

    def __init__(
        self, widths: tuple[int, ...], out_channels: int = 1, skip_connections: bool = True
    ):
        super().__init__()
        first = widths[0]
        map_widths = (widths[-1], *reversed(widths[:-1]), first)  # deepest first: w3 .. w0, w0
        self.skip_connections = skip_connections
        self.blocks = nn.ModuleList()
        running = 0
        for index, width in enumerate(map_widths):
            skip = width if skip_connections or index == 0 else 0
            out = map_widths[index + 1] if index + 1 < len(map_widths) else max(4, first // 2)
            self.blocks.append(
                TwoConv(
                    3,
                    running + skip,
                    out,
                    act=("relu", {"inplace": True}),
                    norm="batch",
                    bias=False,
                )
            )
            running = out
        self.head = nn.Conv3d(running, out_channels, kernel_size=1)

    def forward(self, maps: list[Tensor]) -> Tensor:
        deepest, *finer = reversed(maps)
        running = self.blocks[0](deepest)  # stride 32
        for block, skip in zip(self.blocks[1:], finer):  # strides 16, 8, 4, 2
            running = _upsample(running, skip.shape[2:])
            running = block(torch.cat([skip, running], 1) if self.skip_connections else running)
        return _upsample(self.head(running), [2 * side for side in running.shape[2:]])


def _upsample(volumes: Tensor, size) -> Tensor:
    """Trilinear resizing to ``size`` (twice the side, except where a small input's deepest
    maps are 1 voxel wide and keep their size). The decoder's single-channel output doubled on
    the CPU takes ``doubled_trilinearly``."""
    doubling = tuple(size) == tuple(2 * side for side in volumes.shape[2:])
    if doubling and volumes.shape[1] == 1 and volumes.device.type == "cpu":
        return doubled_trilinearly(volumes)
    return F.interpolate(volumes, size=tuple(size), mode="trilinear", align_corners=False)


def doubled_trilinearly(volumes: Tensor) -> Tensor:
    """``F.interpolate(volumes, scale_factor=2, mode="trilinear", align_corners=False)`` one
    axis at a time: output voxels 2i and 2i + 1 are 3/4 of input voxel i plus 1/4 of its
    neighbour on their side (i - 1, i + 1), the edge voxel standing in for a missing neighbour.

    Plain tensor operations, whose backward autograd derives as cheaply as the forward: on the
    CPU, torch's trilinear kernel and its backward took about 28 ms per step for the quarter-
    width decoder's 1-channel output at batch 32 (16^3 -> 32^3), this about 9 ms. Equal up to
    float rounding (tests/methods/test_residual.py). For maps of many channels in channels_last_3d the
    kernel is faster: ``_upsample`` keeps it there.
    """
    for axis in (2, 3, 4):
        side = volumes.shape[axis]
        edge_first, edge_last = volumes.narrow(axis, 0, 1), volumes.narrow(axis, side - 1, 1)
        before = torch.cat([edge_first, volumes.narrow(axis, 0, side - 1)], axis)
        after = torch.cat([volumes.narrow(axis, 1, side - 1), edge_last], axis)
        kept = 0.75 * volumes
        pairs = torch.stack([kept + 0.25 * before, kept + 0.25 * after], axis + 1)
        volumes = pairs.flatten(axis, axis + 1)
    return volumes


def volume_loss(kind: str, prediction: Tensor, target: Tensor) -> Tensor:
    """Mean voxel loss: ``l1``, ``mse`` or ``bce`` (with logits; ``target`` in [0, 1])."""
    prediction, target = prediction.float(), target.float()
    if kind == "l1":
        return F.l1_loss(prediction, target)
    if kind == "mse":
        return F.mse_loss(prediction, target)
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(prediction, target)
    raise ValueError(f"unknown volume loss {kind!r}; choose one of {', '.join(LOSSES)}")
