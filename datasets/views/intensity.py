"""Intensity operations on the images only (never the targets): gamma, brightness, contrast,
Gaussian blur and Gaussian noise with per-sample parameters; samples an operation leaves alone
are returned bit for bit."""

from __future__ import annotations

from collections.abc import Callable

import torch
from benchmark.datasets.views.resampling import along_axes, to_device
from torch import Tensor


def _change_rows(
    volumes: Tensor,
    parameter: Tensor,
    neutral: float,
    change: Callable[[Tensor, Tensor], Tensor],
    inplace: bool = False,
) -> Tensor:
    """Apply `change(rows, values)` to the samples whose parameter differs from `neutral`.

    volumes: [B, C, D, H, W] floating; parameter: [B] or a number. `change` gets the selected
    rows in float32 and their parameter as a float32 [n, 1, 1, 1, 1] tensor on the volumes'
    device. Other samples are returned bit for bit. Returns a new tensor like `volumes`, or
    `volumes` itself changed with `inplace` (`Views.apply` changes the views it made: a copy
    of the whole batch per operation was a sixth of a contrastive batch's cost on the CPU).
    """
    parameter = _per_sample(parameter, volumes.shape[0])
    result = volumes if inplace else volumes.clone()
    rows = torch.nonzero(parameter != neutral)[:, 0]
    if rows.numel():
        values = to_device(parameter[rows].float(), volumes.device).view(-1, 1, 1, 1, 1)
        rows = to_device(rows, volumes.device)
        result[rows] = change(volumes[rows].float(), values).to(volumes.dtype)
    return result


def _per_sample(parameter: Tensor | float, batch_size: int) -> Tensor:
    """A parameter given per sample ([B], best on the CPU, else reading it synchronises) or as
    one number -> [B] float64 on the CPU."""
    parameter = torch.as_tensor(parameter).detach().to("cpu", torch.float64)
    return parameter.reshape(-1).expand(batch_size)


def adjust_gamma(volumes: Tensor, gamma: Tensor, inplace: bool = False) -> Tensor:
    """Gamma on each sample's own range: lo + (hi - lo) * ((x - lo) / (hi - lo)) ** gamma.

    volumes: [B, C, D, H, W]; gamma: [B] > 0 (1 = unchanged). Constant samples stay unchanged.
    """

    def change(rows: Tensor, gamma: Tensor) -> Tensor:
        low = rows.amin(dim=(1, 2, 3, 4), keepdim=True)
        extent = rows.amax(dim=(1, 2, 3, 4), keepdim=True) - low
        unit = (rows - low) / extent.clamp(min=torch.finfo(torch.float32).tiny)
        return low + extent * unit.clamp(0, 1) ** gamma

    return _change_rows(volumes, gamma, 1.0, change, inplace)


def adjust_brightness(volumes: Tensor, factor: Tensor, inplace: bool = False) -> Tensor:
    """Multiply each sample by its factor. volumes: [B, C, D, H, W]; factor: [B] (1 = unchanged).

    One multiplication of the whole batch, without gathering the changed samples: a factor of
    exactly 1 leaves a sample bit for bit."""
    factor = _per_sample(factor, volumes.shape[0])
    result = volumes if inplace else volumes.clone()
    if (factor != 1).any():
        result.mul_(to_device(factor.float(), volumes.device).view(-1, 1, 1, 1, 1))
    return result


def adjust_contrast(volumes: Tensor, factor: Tensor, inplace: bool = False) -> Tensor:
    """Scale each sample about its mean: x * factor + mean * (1 - factor).

    volumes: [B, C, D, H, W]; factor: [B] (1 = unchanged, 0 = flat at the mean). The whole
    batch in two in-place passes (computed in float32), without gathering the changed samples
    (the gather, temporaries and scatter back took ~7 ms of a 32^3 contrastive batch of 32 on
    the CPU); a sample with factor 1 is multiplied by 1 and shifted by 0, so it is kept bit
    for bit.
    """
    factor = _per_sample(factor, volumes.shape[0])
    result = volumes if inplace else volumes.clone()
    if (factor != 1).any():
        scale = to_device(factor.float(), volumes.device).view(-1, 1, 1, 1, 1)
        mean = result.mean(dim=(1, 2, 3, 4), keepdim=True, dtype=torch.float32)
        shift = torch.where(scale != 1, mean * (1 - scale), 0.0)
        if result.dtype == torch.float32:
            result.mul_(scale).add_(shift)
        else:
            result.copy_(result.float().mul_(scale).add_(shift))
    return result


def gaussian_blur(volumes: Tensor, sigma: Tensor, inplace: bool = False) -> Tensor:
    """Blur each sample with an isotropic Gaussian of its own sigma (voxels; 0 = unchanged).

    volumes: [B, C, D, H, W]; sigma: [B]. Separable, the kernel truncated at each sample's own
    radius max(1, ceil(3 sigma)) and the edges replicated: along each axis one batched matrix
    product with a banded matrix that holds the kernel (`gaussian_blur_weights`), so a sample's
    blur does not depend on the other samples of its batch.
    """

    # The blurred samples' sigmas read on the host, where they were drawn: `_change_rows` hands
    # `change` the same values (rounded to float32) moved to the device, and reading those back
    # would wait for the GPU (the sync audit, benchmark/tools/sync_audit.py, found it).
    host_sigma = _per_sample(sigma, volumes.shape[0])
    blurred_sigma = host_sigma[host_sigma != 0.0].float().to(torch.float64)

    def change(rows: Tensor, sigma_on_device: Tensor) -> Tensor:
        weights = [
            to_device(gaussian_blur_weights(size, blurred_sigma).float(), rows.device)
            for size in rows.shape[2:]
        ]
        return along_axes(rows, weights)

    return _change_rows(volumes, sigma, 0.0, change, inplace)


def gaussian_blur_weights(size: int, sigma: Tensor) -> Tensor:
    """[n, size, size] float64: Gaussian smoothing of a line of `size` voxels, one per sigma
    ([n] > 0, voxels), with replicated edges (taps beyond the line read its end voxel)."""
    radius = (3 * sigma).ceil().clamp(min=1)  # [n]
    largest = int(radius.max())
    offsets = torch.arange(-largest, largest + 1, dtype=torch.float64)
    taps = torch.exp(-0.5 * (offsets / sigma[:, None]) ** 2)
    taps = torch.where(offsets.abs() <= radius[:, None], taps, 0.0)
    taps = taps / taps.sum(dim=1, keepdim=True)  # [n, 2 * largest + 1]
    columns = (torch.arange(size)[:, None] + offsets.long()).clamp(0, size - 1)  # [size, taps]
    weights = torch.zeros(len(sigma), size, size, dtype=torch.float64)
    weights.scatter_add_(2, columns.expand(len(sigma), -1, -1), taps[:, None].expand(-1, size, -1))
    return weights


def add_gaussian_noise(
    volumes: Tensor, std: Tensor, generator: torch.Generator | None = None, inplace: bool = False
) -> Tensor:
    """Add zero-mean Gaussian noise of each sample's std. volumes: [B, C, D, H, W]; std: [B].

    Noise is drawn only for samples with std > 0, on the volumes' device, from `generator`
    (which must live on that device; None uses that device's default generator), scaled in
    float32 and added to those samples in place (`index_add_`: the others are not copied).
    """
    std = _per_sample(std, volumes.shape[0])
    result = volumes if inplace else volumes.clone()
    rows = torch.nonzero(std != 0)[:, 0]
    if rows.numel():
        noise = torch.randn(
            (len(rows), *volumes.shape[1:]), generator=generator, device=volumes.device
        )
        noise.mul_(to_device(std[rows].float(), volumes.device).view(-1, 1, 1, 1, 1))
        result.index_add_(0, to_device(rows, volumes.device), noise.to(volumes.dtype))
    return result
