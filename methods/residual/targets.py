"""Stage 2 of the residual method: residual targets, and how well they localise anomalies.

Bhattacharya et al. (Int J CARS 2024), docs/protocol.md "The residual-reconstruction method", step 2:
residual = |x - CAE(x)|, rescaled to [0, 1] between its 1st and 99th percentile (per volume,
clipped), then a 3D median filter of size 0 (none), 3, 5 or 7. Targets are stored as uint8
(1/255 steps): a 64^3 map is 0.25 MiB, so a whole pool fits in (GPU) memory.

The phantom has true anomaly masks, so the targets can be checked directly: the voxel-level
AUPRC of the residual against the mask (``localisation``), which no published implementation
reports.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from benchmark.methods.residual.cae import ConvAutoencoder3D
from sklearn.metrics import average_precision_score
from torch import Tensor

MEDIAN_FILTER_SIZES = (0, 3, 5, 7)
LEVELS = 255  # uint8 storage: target = stored / LEVELS
_MEDIAN_BYTES = 256 * 2**20  # unfolded windows held at once by the median filter


class ResidualTargetError(RuntimeError):
    """Residual maps that cannot serve as targets (non-finite or constant): the stage fails."""


def median_filter3d(volumes: Tensor, size: int) -> Tensor:
    """Exact 3D median over ``size``^3 windows of ``[N, C, D, H, W]`` on any device.

    Edges repeat the border voxel (``scipy.ndimage.median_filter(mode="nearest")`` gives the
    same result). ``size`` 0 or 1 returns the volumes unchanged.
    """
    if size <= 1:
        return volumes
    if size % 2 == 0:
        raise ValueError(f"the median filter size must be odd (or 0 for none), got {size}")
    half = size // 2
    per_volume = volumes[0].numel() * size**3 * volumes.element_size()
    step = max(1, _MEDIAN_BYTES // per_volume)
    filtered = []
    for chunk in volumes.split(step):
        padded = F.pad(chunk, (half,) * 6, mode="replicate")
        windows = padded.unfold(2, size, 1).unfold(3, size, 1).unfold(4, size, 1)
        filtered.append(windows.reshape(*chunk.shape, -1).median(dim=-1).values)
    return torch.cat(filtered)


def rescale_to_unit(volumes: Tensor, percentiles: Sequence[float]) -> Tensor:
    """Per volume, clip to the ``percentiles`` (e.g. 1, 99) and map them to 0 and 1.

    Where the two percentiles coincide the minimum and maximum are used instead (as the cohort
    loader does); a constant volume raises ``ResidualTargetError``.
    """
    flat = volumes.flatten(1).float()
    quantiles = torch.tensor([p / 100 for p in percentiles], device=flat.device)
    low, high = torch.quantile(flat, quantiles, dim=1)  # [N] each
    tied = high <= low
    low = torch.where(tied, flat.amin(1), low)
    high = torch.where(tied, flat.amax(1), high)
    if bool((high <= low).any()):
        count = int((high <= low).sum())
        raise ResidualTargetError(
            f"{count} residual map(s) are constant, so they cannot be rescaled to [0, 1]: the "
            "autoencoder reproduces those volumes exactly or they are constant; check the "
            "input volumes, or train the autoencoder for fewer epochs"
        )
    shape = (-1,) + (1,) * (volumes.dim() - 1)
    scaled = (volumes.float() - low.view(shape)) / (high - low).view(shape)
    return scaled.clamp(0, 1)


@torch.no_grad()
def residual_targets(
    cae: ConvAutoencoder3D,
    images: Tensor,
    median_filter: int,
    percentiles: Sequence[float],
    device: torch.device,
    describe: Callable[[np.ndarray], str] = lambda positions: f"positions {positions.tolist()}",
    batch_size: int = 32,
) -> Tensor:
    """uint8 targets ``[N, 1, S, S, S]`` (``LEVELS`` = 1.0) of ``images`` ``[N, 1, S, S, S]``.

    Computed in chunks on ``device``. Non-finite reconstructions raise ``ResidualTargetError``
    naming the volumes (``describe`` turns chunk positions into names).
    """
    cae.to(device).eval()
    targets = []
    for start in range(0, len(images), batch_size):
        volumes = images[start : start + batch_size].to(device)
        residual = (volumes - cae(volumes).float()).abs()
        broken = ~torch.isfinite(residual.flatten(1)).all(1)
        if bool(broken.any()):
            positions = start + np.flatnonzero(broken.cpu().numpy())
            raise ResidualTargetError(
                f"the autoencoder's reconstructions of {len(positions)} volume(s) are not "
                f"finite ({describe(positions[:5])}): its training diverged; lower "
                "method.residual.cae.lr or check those volumes"
            )
        residual = median_filter3d(rescale_to_unit(residual, percentiles), median_filter)
        targets.append((residual * LEVELS).round().to(torch.uint8).cpu())
    return torch.cat(targets)


def localisation(targets: Tensor, masks: Tensor) -> dict[str, float]:
    """How well residual targets (uint8) mark the ground-truth anomaly voxels (bool masks).

    ``auprc``: voxel-level average precision of the residual as a score for "inside a mask",
    over every voxel of every volume given (normal volumes contribute negatives only);
    ``chance``: the share of mask voxels, a random score's AUPRC; ``inside``/``outside``: mean
    residual (0-1) in and outside the masks. Exact for the 256 stored levels, computed from
    per-level counts.
    """
    levels = targets.flatten().long()
    inside = masks.flatten().bool()
    positive = torch.bincount(levels[inside], minlength=LEVELS + 1).double()
    negative = torch.bincount(levels[~inside], minlength=LEVELS + 1).double()
    if positive.sum() == 0:
        raise ValueError("the masks mark no anomalous voxel; localisation needs some")
    scores = np.concatenate([np.arange(LEVELS + 1)] * 2)
    labels = np.repeat([1, 0], LEVELS + 1)
    weights = torch.cat([positive, negative]).numpy()
    value = torch.arange(LEVELS + 1, dtype=torch.float64) / LEVELS
    return {
        "auprc": float(average_precision_score(labels, scores, sample_weight=weights)),
        "chance": float(positive.sum() / (positive.sum() + negative.sum())),
        "inside": float((positive * value).sum() / positive.sum()),
        "outside": float((negative * value).sum() / negative.sum()),
    }
