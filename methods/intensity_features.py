"""The trivial baseline: first-order intensity features instead of a learned encoder."""

import torch
from torch import Tensor

from benchmark.method import SSLMethod
from benchmark.registry import register_method

PERCENTILES = (5.0, 25.0, 50.0, 75.0, 95.0)
# Air and cortical bone lie below this in the [0, 1] intensities of the preprocessed volumes
# (1st-99th percentile clipped and rescaled, docs/protocol.md); lesions displace air.
DARK_BELOW = 0.2
# The centre cube's side as a share of the volume's: 16^3 of 64^3, where docs/phantom.md found
# the dark-voxel fraction alone reaching AUPRC 0.77.
CENTRE_SHARE = 0.25
FEATURE_NAMES = tuple(
    f"{region}_{name}"
    for region in ("crop", "centre")
    for name in (*(f"p{p:g}" for p in PERCENTILES), "mean", "std", "dark_fraction")
)


def centre_cube(volumes: Tensor) -> Tensor:
    """The central cube ``[N, 1, c, c, c]`` of volumes ``[N, 1, S, S, S]``, c = S / 4
    (rounded, at least 1)."""
    size = volumes.shape[-1]
    side = max(1, round(CENTRE_SHARE * size))
    start = (size - side) // 2
    return volumes[..., start : start + side, start : start + side, start : start + side]


def first_order_features(volumes: Tensor) -> Tensor:
    """``[N, 8]``: the 5/25/50/75/95th percentiles (linear interpolation), mean, standard
    deviation (population) and share of voxels below ``DARK_BELOW`` of each volume."""
    voxels = volumes.reshape(len(volumes), -1).double()
    quantiles = torch.quantile(voxels, torch.tensor(PERCENTILES, dtype=voxels.dtype) / 100, dim=1)
    return torch.cat(
        [
            quantiles.T,
            voxels.mean(dim=1, keepdim=True),
            voxels.std(dim=1, correction=0, keepdim=True),
            (voxels < DARK_BELOW).double().mean(dim=1, keepdim=True),
        ],
        dim=1,
    ).float()


@register_method("intensity_features")
class IntensityFeatures(SSLMethod):
    """Intensity features: a fixed 16-vector of first-order statistics, probed, never trained.

    For the whole crop and for its centre cube (a quarter of the side): the 5, 25, 50, 75 and
    95th intensity percentiles, the mean, the standard deviation and the fraction of dark
    voxels (below 0.2 of the [0, 1] preprocessed intensity) - the first-order features of
    radiomics (Zwanenburg et al., "The Image Biomarker Standardization Initiative",
    Radiology 2020). The trivial baseline of every table: a learned encoder must beat it to
    mean anything. Evaluated by the frozen-feature protocols ``linear`` and ``knn`` only.
    """

    reference = "first-order features of Zwanenburg et al., Radiology 2020 (IBSI)"
    needs_pretraining = False
    role = "baseline"
    protocols = ("linear", "knn")

    @classmethod
    def frozen_features(cls, images: Tensor) -> Tensor:
        """``[N, 16]`` (``FEATURE_NAMES``) of volumes ``[N, 1, S, S, S]``."""
        return torch.cat(
            [first_order_features(images), first_order_features(centre_cube(images))], 1
        )
