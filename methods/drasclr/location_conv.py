"""A 3D convolution whose kernel is a function of an anatomical location (for DrasCLR).

DrasCLR (Yu et al., Medical Image Analysis 2024) conditions its encoder on where a patch sits in
the atlas: every kernel is a mixture of a few expert kernels, weighted by a routing function of
the patch coordinates (CondConv, Yang et al., NeurIPS 2019, with the routing input swapped from
pooled features to coordinates). Its code mixes one kernel per sample in a Python loop; here the
samples of every location share that location's kernel, so all locations run as one grouped
convolution (location = group).
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LocationConv3d(nn.Module):
    """``kernel(c) = sum_e sigmoid(routing(c))_e * expert_e`` for location coordinates ``c``.

    The routing is one linear layer and a sigmoid, as in DrasCLR's code (``_routing``); no bias
    (a BatchNorm follows in every use).

    Args:
        in_channels, out_channels, kernel_size, stride: as ``nn.Conv3d`` (padding keeps "same").
        experts: number of expert kernels (DrasCLR: 8).
        coordinate_dim: length of a location's coordinates (3: D, H, W).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        experts: int,
        stride: int = 1,
        coordinate_dim: int = 3,
    ):
        super().__init__()
        shape = (experts, out_channels, in_channels, kernel_size, kernel_size, kernel_size)
        self.experts = nn.Parameter(torch.empty(shape))
        for expert in self.experts.data:  # each expert initialised like an nn.Conv3d weight
            nn.init.kaiming_uniform_(expert, a=math.sqrt(5))
        self.routing = nn.Linear(coordinate_dim, experts)
        self.stride = stride
        self.padding = kernel_size // 2

    def kernels(self, coordinates: Tensor) -> Tensor:
        """One kernel per location: coordinates ``[L, 3]`` -> ``[L, out, in, k, k, k]``."""
        weights = torch.sigmoid(self.routing(coordinates))  # [L, experts]
        return torch.einsum("le,eoixyz->loixyz", weights, self.experts)

    def forward(self, x: Tensor, coordinates: Tensor) -> Tensor:
        """``x [N, L, in, D, H, W]`` (N samples at each of L locations), ``coordinates [L, 3]``
        -> ``[N, L, out, D', H', W']``; location l is convolved with ``kernel(coordinates[l])``."""
        locations = x.shape[1]
        kernels = self.kernels(coordinates.to(self.experts.dtype)).flatten(0, 1)
        out = F.conv3d(
            x.flatten(1, 2), kernels, stride=self.stride, padding=self.padding, groups=locations
        )
        return out.unflatten(1, (locations, -1))
