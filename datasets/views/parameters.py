"""The random parameters of a batch of views, drawn in one place from a CPU generator
(``draw_view_parameters``): a fixed number of uniforms per sample, whatever the settings, so
CPU and GPU runs, and settings that differ only in intensity operations, draw the same."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from benchmark.datasets.views.resampling import compose_affine_matrices
from benchmark.datasets.views.settings import OPERATIONS, ViewSettings
from torch import Tensor


@dataclass(frozen=True)
class ViewParameters:
    """The random parameters of one batch of views, all on the CPU.

    `matrices` follow `F.affine_grid`: they map normalised output coordinates (x = W, y = H,
    z = D, in [-1, 1]) to input coordinates. Each intensity parameter holds its neutral value
    (gamma/brightness/contrast 1, blur sigma 0, noise std 0) for samples it leaves alone.
    """

    matrices: Tensor  # [B, 3, 4] float64
    gamma: Tensor  # [B] float64
    brightness: Tensor  # [B]
    contrast: Tensor  # [B]
    blur_sigma: Tensor  # [B], voxels
    noise_std: Tensor  # [B]
    noise_seed: int  # seeds the generator of the noise field on the batch's device


# The uniforms drawn per sample, in order: (name, count). Their number never depends on the
# settings, so a generator advances the same way for every setting.
_UNIFORM_COLUMNS = (
    ("one_of_gate", 1),
    ("one_of_choice", 1),
    ("crop_gate", 1),
    ("crop_volume", 1),
    ("crop_aspect", 3),
    ("crop_centre", 3),
    ("flip_gate", 3),
    ("affine_gate", 1),
    ("rotation", 3),
    ("zoom", 3),
    ("shift", 3),
    ("gamma_gate", 1),
    ("gamma", 1),
    ("brightness_gate", 1),
    ("brightness", 1),
    ("contrast_gate", 1),
    ("contrast", 1),
    ("blur_gate", 1),
    ("blur_sigma", 1),
    ("noise_gate", 1),
    ("noise_std", 1),
)


def draw_view_parameters(
    settings: ViewSettings,
    batch_size: int,
    spatial_shape: Sequence[int],
    generator: torch.Generator | None = None,
) -> ViewParameters:
    """Draw every random parameter of a batch of views from a CPU generator, in one place.

    `generator` None uses torch's default CPU generator (seeded by `torch.manual_seed`).
    """
    if generator is not None and generator.device.type != "cpu":
        raise ValueError(
            f"views draw their parameters from a CPU torch.Generator, got one on {generator.device}"
        )
    names, widths = zip(*_UNIFORM_COLUMNS)
    uniforms = torch.rand(batch_size, sum(widths), generator=generator, dtype=torch.float64)
    column = dict(zip(names, uniforms.split(widths, dim=1)))  # each [B, width]
    noise_seed = int(torch.randint(2**62, (1,), generator=generator))

    selected = _selected_operations(settings, column["one_of_gate"][:, 0], column["one_of_choice"])

    def applied(operation: str) -> Tensor:  # [B, 1] bool
        gate = column[f"{operation}_gate"]
        return selected[operation][:, None] & (gate < getattr(settings, f"{operation}_probability"))

    def uniform(name: str, value_range: tuple[float, float]) -> Tensor:
        low, high = value_range
        return low + (high - low) * column[name]

    crop = applied("crop")
    aspect_low, aspect_high = (math.log(bound) for bound in settings.crop_aspect_range)
    log_aspect = uniform("crop_aspect", (aspect_low, aspect_high))
    log_aspect = log_aspect - log_aspect.mean(dim=1, keepdim=True)
    crop_volume = uniform("crop_volume", settings.crop_volume_range)
    crop_sides = (crop_volume ** (1 / 3) * log_aspect.exp()).clamp(max=1.0)
    crop_sides = torch.where(crop, crop_sides, 1.0)
    crop_centres = torch.where(crop, (1 - crop_sides) * (2 * column["crop_centre"] - 1), 0.0)

    flip_axes = torch.tensor([axis in settings.flip_axes for axis in range(3)])
    flipped = (
        selected["flip"][:, None] & flip_axes & (column["flip_gate"] < settings.flip_probability)
    )
    flip_signs = torch.where(flipped, -1.0, 1.0).double()

    affine = applied("affine")
    max_angle = math.radians(settings.max_rotation_degrees)
    rotation = torch.where(affine, uniform("rotation", (-max_angle, max_angle)), 0.0)
    zoom = uniform("zoom", settings.scale_range)
    if settings.isotropic_scale:
        zoom = zoom[:, :1].expand(-1, 3)
    zoom = torch.where(affine, zoom, 1.0)
    max_shift = settings.max_translation
    shift = torch.where(affine, uniform("shift", (-max_shift, max_shift)), 0.0)

    def intensity(
        operation: str, name: str, value_range: tuple[float, float], neutral: float
    ) -> Tensor:  # [B]
        return torch.where(applied(operation), uniform(name, value_range), neutral)[:, 0]

    return ViewParameters(
        matrices=compose_affine_matrices(
            spatial_shape, crop_sides, crop_centres, flip_signs, rotation, zoom, shift
        ),
        gamma=intensity("gamma", "gamma", settings.gamma_range, 1.0),
        brightness=intensity("brightness", "brightness", settings.brightness_range, 1.0),
        contrast=intensity("contrast", "contrast", settings.contrast_range, 1.0),
        blur_sigma=intensity("blur", "blur_sigma", settings.blur_sigma_range, 0.0),
        noise_std=intensity("noise", "noise_std", settings.noise_std_range, 0.0),
        noise_seed=noise_seed,
    )


def _selected_operations(
    settings: ViewSettings, one_of_gate: Tensor, one_of_choice: Tensor
) -> dict[str, Tensor]:
    """Which samples may get each operation: all, unless `one_of` picks one choice per sample.

    one_of_gate: [B] uniforms; one_of_choice: [B, 1] uniforms. Returns operation -> [B] bool.
    """
    everyone = torch.ones(one_of_gate.shape[0], dtype=torch.bool)
    selected = {operation: everyone for operation in OPERATIONS}
    choices = settings.one_of_operations
    if choices:
        gets_a_choice = one_of_gate < settings.one_of_probability
        choice = (one_of_choice[:, 0] * len(choices)).long().clamp(max=len(choices) - 1)
        for operation in frozenset().union(*choices):
            in_choice = torch.tensor([operation in operations for operations in choices])
            selected[operation] = gets_a_choice & in_choice[choice]
    return selected
