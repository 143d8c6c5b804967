"""Batched 3D augmentations ("views") that run on whatever device the batch is on.

SSL methods need many augmented views per step, so every transform here is a batched tensor op
on the batch's device, never a per-sample CPU worker. A call works in three steps:

1. All random parameters of the batch are drawn in one place (`draw_view_parameters`) from a
   **CPU** `torch.Generator`: one `torch.rand` of a fixed number of uniforms per sample, plus one
   seed for the noise field. The draws do not depend on the device, so CPU and GPU runs get the
   same parameters, and they do not depend on which operations are enabled, so two settings that
   differ only in their intensity operations get the same spatial transforms.
2. Spatial operations (random resized crop, flips, rotation, zoom, shift) of a sample are
   composed into one 3x4 affine and applied as one trilinear resampling (`F.grid_sample`'s,
   computed the cheapest way for each kind of affine, see `apply_affine`) to the image and,
   when given, the target, so the two stay aligned. Samples whose affine is an identity or
   pure axis flip are not resampled: they are copied or flipped exactly.
3. Intensity operations (gamma, brightness, contrast, Gaussian blur, Gaussian noise, in this
   order) change the image only, never the target, with per-sample parameters applied by
   broadcasting. Samples an operation leaves alone are returned bit for bit. The functions
   return new tensors; `Views` calls them with `inplace=True` on the views it has just made.

Intensities are not clamped afterwards (noise and brightness can leave [0, 1]), as with MONAI's
RandGaussianNoise and RandScaleIntensity. Everything runs under `torch.no_grad()`.

The package, one idea a module: ``settings`` (what a view may do, presets), ``parameters`` (step 1),
``resampling`` (step 2), ``intensity`` (step 3); the ``Views`` facade below runs the three.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch
from benchmark.datasets.views.intensity import (
    add_gaussian_noise,
    adjust_brightness,
    adjust_contrast,
    adjust_gamma,
    gaussian_blur,
)
from benchmark.datasets.views.parameters import ViewParameters, draw_view_parameters
from benchmark.datasets.views.resampling import (
    apply_affine,
    compose_affine_matrices,
    trilinear_by_slices,
)
from benchmark.datasets.views.settings import PRESETS, ViewSettings

__all__ = [
    "PRESETS",
    "ViewParameters",
    "ViewSettings",
    "Views",
    "add_gaussian_noise",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_gamma",
    "apply_affine",
    "compose_affine_matrices",
    "draw_view_parameters",
    "gaussian_blur",
    "trilinear_by_slices",
]
from torch import Tensor


class Views:
    """Batched 3D augmentations: `views(images, targets=None, generator=None)`.

    images: [B, 1, D, H, W] floating (float32, bf16 or fp16) on any device; targets:
    [B, C, D, H, W] or None on the same device: floating targets are resampled trilinearly,
    others (bool/uint8 masks, integer labels) with nearest neighbour, and keep their dtype.
    Spatial operations touch images and targets alike; intensity operations the images only.
    Returns new tensors `(views, target_views)`; the inputs are never modified.
    `generator`: a CPU `torch.Generator` (None: torch's default one); the same inputs and
    generator state give the same output, and the same parameters on CPU and GPU.
    """

    def __init__(self, settings: ViewSettings) -> None:
        self.settings = settings

    @classmethod
    def from_config(cls, config: Mapping | None) -> Views:
        """Build from `{"preset": name, **overrides}`; None or no preset means "none"."""
        overrides = dict(config or {})
        preset = overrides.pop("preset", "none")
        settings = PRESETS.get(preset)
        known = {field.name for field in dataclasses.fields(ViewSettings)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(
                f"unknown views setting(s) {unknown}; the settings are {sorted(known)}"
            )
        return cls(dataclasses.replace(settings, **overrides))

    def __repr__(self) -> str:
        return f"Views({self.settings!r})"

    @torch.no_grad()
    def __call__(
        self,
        images: Tensor,
        targets: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Draw this batch's parameters from `generator` and apply them (see the class doc)."""
        _check_batch(images, targets)
        if self.settings.is_identity:
            return images.clone(), None if targets is None else targets.clone()
        parameters = draw_view_parameters(
            self.settings, images.shape[0], images.shape[2:], generator
        )
        return self.apply(images, targets, parameters)

    @torch.no_grad()
    def apply(
        self, images: Tensor, targets: Tensor | None, parameters: ViewParameters
    ) -> tuple[Tensor, Tensor | None]:
        """Apply already drawn parameters (e.g. the same spatial transform to several tensors)."""
        _check_batch(images, targets)
        if parameters.matrices.shape[0] != images.shape[0]:
            raise ValueError(
                f"parameters were drawn for {parameters.matrices.shape[0]} samples, "
                f"got a batch of {images.shape[0]}"
            )
        padding_mode = self.settings.padding_mode
        views = apply_affine(images.float(), parameters.matrices, "bilinear", padding_mode)
        target_views = None
        if targets is not None:
            mode = "bilinear" if targets.is_floating_point() else "nearest"
            target_views = apply_affine(targets, parameters.matrices, mode, padding_mode)
        # `views` is this call's own tensor: each intensity operation changes it in place.
        adjust_gamma(views, parameters.gamma, inplace=True)
        adjust_brightness(views, parameters.brightness, inplace=True)
        adjust_contrast(views, parameters.contrast, inplace=True)
        gaussian_blur(views, parameters.blur_sigma, inplace=True)
        noise_generator = torch.Generator(device=images.device).manual_seed(parameters.noise_seed)
        add_gaussian_noise(views, parameters.noise_std, noise_generator, inplace=True)
        return views.to(images.dtype), target_views


def _check_batch(images: Tensor, targets: Tensor | None) -> None:
    """Raise ValueError unless images is [B, C, D, H, W] floating and targets match it."""
    if images.dim() != 5 or not images.is_floating_point():
        raise ValueError(
            f"views need floating images [B, 1, D, H, W], got {images.dtype} {tuple(images.shape)}"
        )
    if targets is None:
        return
    if targets.dim() != 5 or targets.shape[0] != images.shape[0]:
        raise ValueError(
            f"targets must be [B, C, D, H, W] with the images' B, got {tuple(targets.shape)} "
            f"for images {tuple(images.shape)}"
        )
    if targets.shape[2:] != images.shape[2:] or targets.device != images.device:
        raise ValueError(
            f"targets must have the images' spatial shape and device: targets "
            f"{tuple(targets.shape)} on {targets.device}, images {tuple(images.shape)} on "
            f"{images.device}"
        )
