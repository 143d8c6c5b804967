"""Stage 1 of the residual method: a 3D convolutional autoencoder (CAE) of normal sinuses.

Bhattacharya et al. (Int J CARS 2024), docs/protocol.md "The residual-reconstruction method", step 1:
an encoder of three stride-2 5^3 convolutions (16/32/64 channels, BatchNorm, LeakyReLU), a 1^3
convolution to 4 channels and a linear map to a 512-d latent; a mirrored decoder (linear, 1^3
convolution back to 64 channels, then per scale a 5^3 convolution, BatchNorm, LeakyReLU and a
trilinear 2x upsampling, as in the reference code); L1 loss, Adam lr 1e-4, batch 16. Trained on
normal sinuses only, it reconstructs normal anatomy well and anomalies badly, so its residual
marks what is abnormal.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from benchmark.datasets.batches import TensorBatches, batch_loader
from torch import Tensor, nn

from benchmark.nn.optimizers import fused_optimizer


class ConvAutoencoder3D(nn.Module):
    """The CAE for cubes of ``size``^3 voxels (``size`` a multiple of 2^len(channels)).

    Args:
        size: voxels per side of the input (32 in the CPU profiles, 64 in the paper's).
        channels: encoder widths, one stride-2 convolution each (paper: 16, 32, 64).
        bottleneck_channels: channels of the 1^3 convolution before the latent (paper: 4).
        latent_dim: length of the latent vector (paper: 512).
        kernel_size: of every encoder and decoder convolution (paper: 5).
    """

    def __init__(
        self,
        size: int,
        channels: tuple[int, ...] = (16, 32, 64),
        bottleneck_channels: int = 4,
        latent_dim: int = 512,
        kernel_size: int = 5,
    ):
        super().__init__()
        factor = 2 ** len(channels)
        if size % factor:
            raise ValueError(
                f"the CAE needs a volume size divisible by {factor} (it halves the size "
                f"{len(channels)} times), got data.size={size}"
            )
        self.grid = (bottleneck_channels, *(3 * [size // factor]))  # [4, S/8, S/8, S/8]
        flat = bottleneck_channels * (size // factor) ** 3
        padding = kernel_size // 2
        encoder, previous = [], 1
        for width in channels:
            encoder += [
                nn.Conv3d(previous, width, kernel_size, stride=2, padding=padding),
                nn.BatchNorm3d(width),
                nn.LeakyReLU(),
            ]
            previous = width
        encoder.append(nn.Conv3d(previous, bottleneck_channels, 1))
        self.encoder = nn.Sequential(*encoder)
        self.to_latent = nn.Linear(flat, latent_dim)
        self.from_latent = nn.Linear(latent_dim, flat)
        decoder = [nn.Conv3d(bottleneck_channels, previous, 1)]
        for width in (*reversed(channels[:-1]), None):
            decoder.append(nn.Conv3d(previous, width or 1, kernel_size, padding=padding))
            if width:  # the last convolution gives the intensities: no norm, no activation
                decoder += [nn.BatchNorm3d(width), nn.LeakyReLU()]
            decoder.append(nn.Upsample(scale_factor=2, mode="trilinear", align_corners=False))
            previous = width
        self.decoder = nn.Sequential(*decoder)

    def forward(self, volumes: Tensor) -> Tensor:
        """Reconstructions ``[B, 1, S, S, S]`` of volumes ``[B, 1, S, S, S]``."""
        latent = self.to_latent(self.encoder(volumes).flatten(1))  # [B, latent_dim]
        grid = self.from_latent(latent).view(-1, *self.grid)
        return self.decoder(grid)


def train_autoencoder(
    model: ConvAutoencoder3D,
    images: Tensor,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    device: torch.device,
) -> tuple[list[float], int]:
    """Fit the CAE to ``images`` with L1 loss and Adam; returns the mean loss of each epoch and
    the number of optimiser steps taken (the method's cost beyond the common budget).

    A compact loop (the stage is cached as a whole, so it needs no checkpoints): batches come
    from the spine's in-memory loader, shuffled per epoch by ``seed``.
    """
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, **fused_optimizer(model))
    loader = batch_loader(TensorBatches(image=images), batch_size, seed)
    losses, steps = [], 0
    for epoch in range(epochs):
        loader.batch_sampler.sampler.set_epoch(epoch)
        # Summed on the device (in float64, as the Python float it replaces) and read once per
        # epoch: reading each step's loss would make the host wait for the GPU every step.
        total, count = torch.zeros((), dtype=torch.float64, device=device), 0
        for batch in loader:
            volumes = batch["image"].to(device, non_blocking=True)
            loss = F.l1_loss(model(volumes), volumes)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
            total += loss.detach().double() * len(volumes)
            count += len(volumes)
        losses.append(total.item() / count)
    return losses, steps


@torch.no_grad()
def reconstruct(model: ConvAutoencoder3D, images: Tensor, device: torch.device) -> Tensor:
    """CAE reconstructions of ``images`` ``[N, 1, S, S, S]`` (evaluation mode, on the CPU)."""
    model.to(device).eval()
    chunks = [model(images[i : i + 32].to(device)).float().cpu() for i in range(0, len(images), 32)]
    return torch.cat(chunks) if chunks else images.new_zeros((0, *images.shape[1:]))
