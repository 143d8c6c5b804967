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
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

# Operation names, as used in `ViewSettings.one_of` ("affine+flip" applies both).
SPATIAL_OPERATIONS = ("crop", "flip", "affine")
INTENSITY_OPERATIONS = ("gamma", "brightness", "contrast", "blur", "noise")
OPERATIONS = SPATIAL_OPERATIONS + INTENSITY_OPERATIONS

PADDING_MODES = ("border", "zeros", "reflection")


@dataclass(frozen=True)
class ViewSettings:
    """Every knob of `Views`; the defaults are the identity (no operation is ever applied).

    Each operation has a probability; it is applied to each sample independently with that
    probability, and its parameters are drawn uniformly from its range. Spatial axes 0, 1, 2 are
    D, H, W of a `[B, C, D, H, W]` batch; voxels are taken to be isotropic.

    Spatial (composed into one affine per sample; the view is cropped, then flipped, then
    rotated, zoomed and shifted):
        crop_probability: random resized crop (SimCLR's RandomResizedCrop in 3D).
        crop_volume_range: fraction of the volume the crop keeps, in (0, 1].
        crop_aspect_range: per-axis aspect factor range (log-uniform; the three factors are
            divided by their geometric mean so the crop volume is kept), low <= 1 <= high.
            A side longer than the volume is cut to the volume (which then keeps less volume).
            The crop's centre is uniform over the positions that keep it inside the volume, and
            the crop is resized to the full output size.
        flip_probability: probability of flipping each axis in `flip_axes`, independently.
        flip_axes: the spatial axes that may be flipped, a subset of (0, 1, 2).
        affine_probability: probability of a random rotation + zoom + shift.
        max_rotation_degrees: rotation about each axis, uniform in [-max, max], in [0, 180].
        scale_range: zoom factor (> 1 magnifies), uniform per axis unless `isotropic_scale`.
        isotropic_scale: one zoom factor for all three axes.
        max_translation: shift along each axis, uniform in [-max, max], as a fraction of the
            side (10 voxels at 64^3 = 10 / 64), in [0, 1].
        padding_mode: what `grid_sample` reads outside the volume: "border" (default: the
            crops are cut from a larger head, so the edge voxels are a better guess than an
            artificial black frame a network could learn to spot), "zeros" or "reflection".

    Intensity (image only):
        gamma_probability, gamma_range: x -> lo + (hi - lo) * ((x - lo) / (hi - lo)) ** gamma
            with lo, hi the sample's minimum and maximum; gamma > 0.
        brightness_probability, brightness_range: x -> x * factor; factor >= 0.
        contrast_probability, contrast_range: x -> mean + (x - mean) * factor with the sample's
            mean; factor >= 0.
        blur_probability, blur_sigma_range: Gaussian blur, sigma in voxels, in [0, 10].
        noise_probability, noise_std_range: additive Gaussian noise, std in intensity units
            (volumes are in [0, 1]), >= 0.

    Choosing one operation (the paper's "with p=0.5 apply one of ..."):
        one_of: choices such as ("affine", "flip", "affine+flip"); each is one operation name or
            several joined with "+". With probability `one_of_probability` a sample gets one
            choice, picked uniformly, and only the operations of that choice; the operations
            named in `one_of` are applied to no other sample. Each still needs its own
            probability (use 1.0 for "always when chosen"). Operations not named in `one_of`
            are applied independently as usual.
        one_of_probability: in [0, 1].
    """

    crop_probability: float = 0.0
    crop_volume_range: tuple[float, float] = (1.0, 1.0)
    crop_aspect_range: tuple[float, float] = (1.0, 1.0)
    flip_probability: float = 0.0
    flip_axes: tuple[int, ...] = (0, 1, 2)
    affine_probability: float = 0.0
    max_rotation_degrees: float = 0.0
    scale_range: tuple[float, float] = (1.0, 1.0)
    isotropic_scale: bool = False
    max_translation: float = 0.0
    padding_mode: str = "border"
    gamma_probability: float = 0.0
    gamma_range: tuple[float, float] = (1.0, 1.0)
    brightness_probability: float = 0.0
    brightness_range: tuple[float, float] = (1.0, 1.0)
    contrast_probability: float = 0.0
    contrast_range: tuple[float, float] = (1.0, 1.0)
    blur_probability: float = 0.0
    blur_sigma_range: tuple[float, float] = (0.0, 0.0)
    noise_probability: float = 0.0
    noise_std_range: tuple[float, float] = (0.0, 0.0)
    one_of: tuple[str, ...] = ()
    one_of_probability: float = 1.0

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            is_list = isinstance(value, Sequence) and not isinstance(value, str)
            if isinstance(field.default, tuple) and not is_list:
                raise ValueError(f"ViewSettings.{field.name} must be a list, got {value!r}")
            if is_list:
                object.__setattr__(self, field.name, tuple(value))
        for operation in OPERATIONS:
            _check_number(f"{operation}_probability", getattr(self, f"{operation}_probability"))
        _check_number("one_of_probability", self.one_of_probability)
        _check_range("crop_volume_range", self.crop_volume_range, 0.0, 1.0, open_low=True)
        _check_range("crop_aspect_range", self.crop_aspect_range, 0.0, math.inf, open_low=True)
        if not self.crop_aspect_range[0] <= 1.0 <= self.crop_aspect_range[1]:
            raise ValueError(
                f"ViewSettings.crop_aspect_range must satisfy low <= 1 <= high, "
                f"got {self.crop_aspect_range!r}"
            )
        _check_number("max_rotation_degrees", self.max_rotation_degrees, 0.0, 180.0)
        _check_range("scale_range", self.scale_range, 0.0, math.inf, open_low=True)
        _check_number("max_translation", self.max_translation, 0.0, 1.0)
        _check_range("gamma_range", self.gamma_range, 0.0, math.inf, open_low=True)
        _check_range("brightness_range", self.brightness_range, 0.0, math.inf)
        _check_range("contrast_range", self.contrast_range, 0.0, math.inf)
        _check_range("blur_sigma_range", self.blur_sigma_range, 0.0, 10.0)
        _check_range("noise_std_range", self.noise_std_range, 0.0, math.inf)
        if self.isotropic_scale is not True and self.isotropic_scale is not False:
            raise ValueError(
                f"ViewSettings.isotropic_scale must be true or false, got {self.isotropic_scale!r}"
            )
        if self.padding_mode not in PADDING_MODES:
            raise ValueError(
                f"ViewSettings.padding_mode must be one of {PADDING_MODES}, "
                f"got {self.padding_mode!r}"
            )
        if len(set(self.flip_axes)) != len(self.flip_axes) or not set(self.flip_axes) <= {0, 1, 2}:
            raise ValueError(
                f"ViewSettings.flip_axes must be distinct spatial axes from (0, 1, 2), "
                f"got {self.flip_axes!r}"
            )
        for choice in self.one_of:
            names = choice.split("+") if isinstance(choice, str) else [choice]
            if any(name not in OPERATIONS for name in names):
                raise ValueError(
                    f"ViewSettings.one_of: {choice!r} names no operation from {OPERATIONS}"
                )
            never_applied = [name for name in names if getattr(self, f"{name}_probability") == 0]
            if never_applied:
                raise ValueError(
                    f"ViewSettings.one_of names {never_applied[0]!r} but "
                    f"{never_applied[0]}_probability is 0, so choosing it would do nothing"
                )

    @property
    def one_of_operations(self) -> tuple[frozenset[str], ...]:
        """The operations of each `one_of` choice."""
        return tuple(frozenset(choice.split("+")) for choice in self.one_of)

    @property
    def is_identity(self) -> bool:
        """True when no operation can ever be applied."""
        named = frozenset().union(*self.one_of_operations)
        return all(
            getattr(self, f"{operation}_probability") == 0
            or (operation in named and self.one_of_probability == 0)
            for operation in OPERATIONS
        )


def _check_number(
    name: str, value: object, low: float = 0.0, high: float = 1.0, open_low: bool = False
) -> None:
    """Raise ValueError naming `name` unless `value` is a real number in [low, high]."""
    allowed = f"{'(' if open_low else '['}{low:g}, {high:g}]"
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not is_number or not (low < value if open_low else low <= value) or not value <= high:
        raise ValueError(f"ViewSettings.{name} must be a number in {allowed}, got {value!r}")


def _check_range(name: str, value: object, low: float, high: float, open_low: bool = False) -> None:
    """Raise ValueError naming `name` unless `value` is (lo, hi) with lo <= hi, both in bounds."""
    allowed = f"{'(' if open_low else '['}{low:g}, {high:g}]"
    if not isinstance(value, tuple) or len(value) != 2:
        raise ValueError(
            f"ViewSettings.{name} must be a pair (low, high) in {allowed}, got {value!r}"
        )
    for bound in value:
        _check_number(name, bound, low, high, open_low)
    if value[0] > value[1]:
        raise ValueError(f"ViewSettings.{name} must have low <= high, got {value!r}")


# The presets. Probabilities and ranges cite their source; images are in [0, 1] and 64^3.
PRESETS: dict[str, ViewSettings] = {
    "none": ViewSettings(),
    # PROTOCOL.md (Bhattacharya et al. 2024, reference code): with p=0.5 one of random affine
    # (scale 0.8-1.2, 10 degrees, 10-voxel shift at 64^3), random flip, Gaussian noise (std up
    # to 0.25), blur, affine+flip. The protocol gives no blur strength or flip axes: the blur
    # sigma is MONAI RandGaussianSmooth's default range, and each axis flips with p=0.5 (so 1
    # in 8 chosen flips leaves the sample as it is).
    "paper": ViewSettings(
        affine_probability=1.0,
        max_rotation_degrees=10.0,
        scale_range=(0.8, 1.2),
        max_translation=10 / 64,
        flip_probability=0.5,
        noise_probability=1.0,
        noise_std_range=(0.0, 0.25),
        blur_probability=1.0,
        blur_sigma_range=(0.25, 1.5),
        one_of=("affine", "flip", "noise", "blur", "affine+flip"),
        one_of_probability=0.5,
    ),
    # Strong SSL views: SimCLR (Chen et al. 2020): random resized crop (area 0.08-1, aspect
    # 3/4-4/3), flip, colour jitter at p=0.8, Gaussian blur at p=0.5, adapted to 3D grey-value
    # MRI as in Taleb et al. 2020 ("3D self-supervised methods for medical imaging") and the
    # MONAI SSL tutorials: a milder crop (30-100 % of the volume, since a 64^3 sinus crop is
    # small), flips on every axis, small rotations instead of colour hue/saturation,
    # brightness/contrast at SimCLR's strength 0.5 (factor 0.6-1.4), gamma as in MONAI
    # RandAdjustContrast but narrower, and mild noise.
    "contrastive": ViewSettings(
        crop_probability=1.0,
        crop_volume_range=(0.3, 1.0),
        crop_aspect_range=(3 / 4, 4 / 3),
        flip_probability=0.5,
        affine_probability=0.5,
        max_rotation_degrees=15.0,
        brightness_probability=0.8,
        brightness_range=(0.6, 1.4),
        contrast_probability=0.8,
        contrast_range=(0.6, 1.4),
        gamma_probability=0.3,
        gamma_range=(0.7, 1.5),
        blur_probability=0.5,
        blur_sigma_range=(0.1, 1.5),
        noise_probability=0.5,
        noise_std_range=(0.0, 0.1),
    ),
    # Mild jitter for fine-tuning: small affine (5 degrees, 5 % zoom, 3 voxels at 64^3) and
    # intensity; no flips, so mirrored right sinuses keep looking like left ones.
    "light": ViewSettings(
        affine_probability=0.5,
        max_rotation_degrees=5.0,
        scale_range=(0.95, 1.05),
        max_translation=3 / 64,
        brightness_probability=0.5,
        brightness_range=(0.9, 1.1),
        contrast_probability=0.5,
        contrast_range=(0.9, 1.1),
        noise_probability=0.2,
        noise_std_range=(0.0, 0.02),
    ),
}


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


def compose_affine_matrices(
    spatial_shape: Sequence[int],
    crop_sides: Tensor,
    crop_centres: Tensor,
    flip_signs: Tensor,
    rotation_radians: Tensor,
    zoom: Tensor,
    shift: Tensor,
) -> Tensor:
    """Compose crop, flip, rotation, zoom and shift of each sample into one `affine_grid` matrix.

    Every argument but `spatial_shape` (D, H, W) is [B, 3] in spatial-axis order (D, H, W):
    crop_sides: crop side as a fraction of the volume's side (1 = no crop);
    crop_centres: crop centre in normalised coordinates [-1, 1] (0 = centre);
    flip_signs: -1 to flip the axis, 1 to keep it;
    rotation_radians: rotation about each axis (applied about D, then H, then W);
    zoom: magnification per axis (> 1 zooms in);
    shift: translation as a fraction of the side.
    The view is the crop (resized to the full size), flipped, then rotated, zoomed and shifted.
    Rotations act in voxel units, so they are rigid for any D, H, W (isotropic voxels).
    Returns [B, 3, 4] float64 matrices mapping normalised output coordinates (x = W, y = H,
    z = D) to input coordinates, as `F.affine_grid(..., align_corners=False)` expects. With no
    crop, rotation, zoom or shift the result is exactly diag(flip_signs) in x, y, z order.
    """
    crop_sides, crop_centres, flip_signs, rotation_radians, zoom, shift = (
        value.double()
        for value in (crop_sides, crop_centres, flip_signs, rotation_radians, zoom, shift)
    )
    half_sides = torch.tensor([float(side) for side in spatial_shape], dtype=torch.float64) / 2
    # Work in centred voxel units q = normalised * half_side, where rotations are rigid.
    # Output q maps to input q by: crop(flip(rotate(zoom^-1 q) + shift)).
    linear = torch.diag_embed(crop_sides * flip_signs) @ _rotation_matrices(rotation_radians)
    linear = linear @ torch.diag_embed(1 / zoom)  # [B, 3, 3]
    translation = crop_sides * flip_signs * shift * 2 * half_sides + crop_centres * half_sides
    # Back to normalised units: divide row i by half_side[i], multiply column j by half_side[j].
    # The diagonal ratio is exactly 1, so a pure flip stays exact.
    linear = linear * (half_sides[None, :] / half_sides[:, None])
    translation = translation / half_sides
    # affine_grid orders coordinates x, y, z = W, H, D: reverse the axes.
    linear = linear.flip(1, 2)
    translation = translation.flip(1)
    return torch.cat([linear, translation[:, :, None]], dim=2)


def _rotation_matrices(radians: Tensor) -> Tensor:
    """[B, 3] angles about spatial axes 0, 1, 2 -> [B, 3, 3] rotations R2 @ R1 @ R0."""
    rotation = torch.eye(3, dtype=radians.dtype).expand(radians.shape[0], 3, 3)
    for axis in range(3):
        i, j = (other for other in range(3) if other != axis)
        cos, sin = radians[:, axis].cos(), radians[:, axis].sin()
        about_axis = torch.eye(3, dtype=radians.dtype).repeat(radians.shape[0], 1, 1)
        about_axis[:, i, i], about_axis[:, i, j] = cos, -sin
        about_axis[:, j, i], about_axis[:, j, j] = sin, cos
        rotation = about_axis @ rotation
    return rotation


def apply_affine(
    volumes: Tensor, matrices: Tensor, mode: str = "bilinear", padding_mode: str = "border"
) -> Tensor:
    """Resample each volume with its affine, the whole batch at once.

    volumes: [B, C, D, H, W], any dtype on any device; matrices: [B, 3, 4] in `F.affine_grid`
    convention (align_corners=False), best on the CPU (else reading them synchronises). mode:
    "bilinear" (trilinear, floating volumes only) or "nearest" (masks and labels).
    The result is `F.grid_sample`'s, computed the cheapest exact way for each sample:
    * an identity or a pure axis flip is copied or flipped exactly;
    * an axis-aligned affine (crop, flip, zoom, shift: a diagonal linear part) is trilinear
      resampling that factorises over the axes, done as three batched matrix products with
      per-axis interpolation weights (`axis_resampling_weights`): about 10x cheaper than
      `grid_sample` on the CPU, equal to it up to float rounding;
    * any other affine (a rotation) is `trilinear_by_slices` (bilinear mode; equal to
      `grid_sample` up to the rounding of its coordinates), or `F.affine_grid` +
      `F.grid_sample` in nearest mode.
    Computes in float32 and returns a new tensor of the input's dtype: [B, C, D, H, W].
    """
    if mode != "nearest" and not volumes.is_floating_point():
        raise ValueError(f"apply_affine: mode {mode!r} needs floating volumes, got {volumes.dtype}")
    matrices = matrices.detach().to("cpu", torch.float64)
    linear, translation = matrices[:, :, :3], matrices[:, :, 3]
    diagonal = torch.diagonal(linear, dim1=1, dim2=2)  # [B, 3] in x, y, z order
    is_axis_aligned = (linear == torch.diag_embed(diagonal)).all(dim=(1, 2))
    is_axis_flip = (
        is_axis_aligned & (diagonal.abs() == 1).all(dim=1) & (translation == 0).all(dim=1)
    )
    separable = is_axis_aligned & ~is_axis_flip & (mode == "bilinear")
    result = volumes.clone()
    for xyz_axis in range(3):
        rows = torch.nonzero(is_axis_flip & (diagonal[:, xyz_axis] < 0))[:, 0]
        if rows.numel():
            rows = to_device(rows, volumes.device)
            result[rows] = result[rows].flip(4 - xyz_axis)  # x is W (dim 4), z is D (dim 2)
    rows = torch.nonzero(separable)[:, 0]
    if rows.numel():
        weights = [
            to_device(
                axis_resampling_weights(
                    volumes.shape[4 - xyz_axis],
                    diagonal[rows, xyz_axis],
                    translation[rows, xyz_axis],
                    padding_mode,
                ).float(),
                volumes.device,
            )
            for xyz_axis in (2, 1, 0)  # D, H, W
        ]
        rows = to_device(rows, volumes.device)
        result[rows] = along_axes(volumes[rows].float(), weights).to(volumes.dtype)
    rows = torch.nonzero(~is_axis_flip & ~separable)[:, 0]
    if rows.numel():
        theta = matrices[rows]  # [n, 3, 4]
        rows = to_device(rows, volumes.device)
        selected = volumes[rows].float()  # [n, C, D, H, W]
        if mode == "bilinear":
            resampled = trilinear_by_slices(selected, theta, padding_mode)
        else:
            theta = to_device(theta.float(), volumes.device)
            grid = F.affine_grid(theta, list(selected.shape), align_corners=False)
            resampled = F.grid_sample(selected, grid, mode, padding_mode, align_corners=False)
        result[rows] = resampled.to(volumes.dtype)
    return result


def trilinear_by_slices(volumes: Tensor, matrices: Tensor, padding_mode: str = "border") -> Tensor:
    """``F.grid_sample(volumes, F.affine_grid(matrices), "bilinear", padding_mode)`` for any
    affine (align_corners=False), as one bilinear sample of a 2D image and a blend along D.

    Trilinear interpolation is linear interpolation, along D, between bilinear samples of the
    two slices on either side of the source point. The slices, each framed by one padding row
    above and below (and the volume by one padding slice at each end), are stacked into one tall
    2D image, whose second block of channels holds each slice's successor: torch's vectorised
    2D sampler reads both slices' taps of a voxel at one image position in one call. Its 3D
    sampler is not vectorised on the CPU, and this is about 3.5x faster there (0.30 against
    1.1 ms per 32^3 volume on the 2-core build machine). The frame rows hold what the padding
    mode reads outside the volume (zeros, or the edge voxels), so a tap never reaches a
    neighbouring slice. W is left to the 2D sampler, in the same padding mode.

    The price is coordinate rounding: a row coordinate normalised over the tall image is off by
    up to (D + 2)(H + 2) / 2 * 2^-24 voxels, so values differ from ``F.grid_sample`` by up to
    about 2e-4 times the local voxel-to-voxel difference at 32^3 (tests/datasets/test_views.py).
    volumes: [n, C, D, H, W] float32; matrices: [n, 3, 4] on the CPU. Returns [n, C, D, H, W].
    """
    n, channels, depth, height, width = volumes.shape
    shape = (depth, height, width)
    matrices = matrices.to("cpu", torch.float64)
    x = _source_coordinates(matrices[:, 0], shape, volumes.device)  # normalised, for the sampler
    y = _source_coordinates(matrices[:, 1], shape, volumes.device, height)  # voxels
    z = _source_coordinates(matrices[:, 2], shape, volumes.device, depth)
    if padding_mode == "reflection":
        y, z = reflect_coordinates(y, height), reflect_coordinates(z, depth)
    if padding_mode == "zeros":  # a frame row or slice is read at -1 and size: zeros beyond
        y, z = y.clamp_(-1, height), z.clamp_(-1, depth)
    else:
        y, z = y.clamp_(0, height - 1), z.clamp_(0, depth - 1)
    low = z.floor()
    fraction = z.sub_(low)
    framed_rows = height + 2
    tall_rows = (depth + 2) * framed_rows
    frame = "constant" if padding_mode == "zeros" else "replicate"
    framed = F.pad(volumes, (0, 0, 1, 1, 1, 1), mode=frame)  # [n, C, D + 2, H + 2, W]
    slices = torch.empty(n, 2, channels, depth + 2, framed_rows, width, device=volumes.device)
    slices[:, 0] = framed
    slices[:, 1, :, :-1] = framed[:, :, 1:]  # each slice's successor
    slices[:, 1, :, -1] = 0  # after the last frame slice: read only with weight 0
    tall = slices.view(n, 2 * channels, tall_rows, width)
    # Row (low + 1) * framed_rows + y + 1 of the tall image (the frame shifts everything by
    # one), normalised as the sampler reads it: (2 row + 1) / tall_rows - 1.
    row = low.add_(1).mul_(framed_rows).add_(y).mul_(2 / tall_rows).add_(3 / tall_rows - 1)
    grid = torch.stack((x, row), dim=-1).view(n, depth * height, width, 2)
    taps = F.grid_sample(tall, grid, "bilinear", padding_mode, align_corners=False)
    taps = taps.view(n, 2, channels, depth, height, width)
    return torch.lerp(taps[:, 0], taps[:, 1], fraction[:, None])


def _source_coordinates(
    row: Tensor, shape: Sequence[int], device: torch.device, size: int | None = None
) -> Tensor:
    """One coordinate of every output voxel's source point: [n, D, H, W] float32.

    row: [n, 4] float64, one row of `affine_grid` matrices (normalised output x, y, z, 1 ->
    normalised input coordinate). With `size`, the coordinate is in voxels of an axis of that
    size, as `grid_sample` unnormalises it: ((c + 1) * size - 1) / 2. The map is affine in the
    output indices, so it is the sum of three broadcast lines.
    """
    scale, offset = (1.0, 0.0) if size is None else (size / 2, (size - 1) / 2)
    lines = []
    for column, length in zip((2, 1, 0), shape):  # z = D, y = H, x = W
        normalised = (torch.arange(length, dtype=torch.float64) * 2 + 1) / length - 1
        lines.append(row[:, column, None] * normalised * scale)
    along_d, along_h, along_w = lines
    along_d = along_d + row[:, 3, None] * scale + offset
    n, (depth, height, width) = row.shape[0], shape
    along_d, along_h, along_w = (
        to_device(line.float(), device) for line in (along_d, along_h, along_w)
    )
    plane = along_d.view(n, depth, 1, 1) + along_h.view(n, 1, height, 1)
    return plane + along_w.view(n, 1, 1, width)


def reflect_coordinates(coordinate: Tensor, size: int) -> Tensor:
    """Voxel coordinates reflected about the volume's outer faces (-0.5 and size - 0.5), as
    `grid_sample`'s reflection padding with align_corners=False reads them."""
    shifted = (coordinate + 0.5).abs()
    flips, extra = torch.div(shifted, size, rounding_mode="floor"), torch.fmod(shifted, size)
    return torch.where(flips % 2 == 0, extra - 0.5, size - extra - 0.5)


def to_device(tensor: Tensor, device: torch.device) -> Tensor:
    """A small CPU tensor (rows, parameters, weights) on ``device`` without waiting: a blocking
    host-to-GPU copy synchronises the stream, so every view would stall the GPU's queue."""
    if device.type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def axis_resampling_weights(
    size: int, scale: Tensor, offset: Tensor, padding_mode: str = "border"
) -> Tensor:
    """Linear-interpolation weights along one axis, as `F.grid_sample` reads it.

    Output voxel o sits at the normalised coordinate (2 o + 1) / size - 1 and reads the input
    at `scale * that + offset` (align_corners=False), with `padding_mode` outside the volume.
    scale, offset: [n] (one entry of an axis-aligned `affine_grid` matrix per sample).
    Returns [n, size, size] float64: output o = sum over i of weights[o, i] * input i.
    """
    scale, offset = scale.to(torch.float64), offset.to(torch.float64)
    output = (torch.arange(size, dtype=torch.float64) * 2 + 1) / size - 1
    coordinate = ((scale[:, None] * output + offset[:, None] + 1) * size - 1) / 2  # [n, size]
    if padding_mode == "reflection":
        coordinate = reflect_coordinates(coordinate, size)
    if padding_mode != "zeros":
        coordinate = coordinate.clamp(0, size - 1)
    low = coordinate.floor()
    fraction = coordinate - low
    weights = torch.zeros(len(scale), size, size + 2, dtype=torch.float64)
    # Columns shifted by one so that neighbours just outside (zeros padding) land in the
    # first or last column, which are then dropped.
    for neighbour, weight in ((low, 1 - fraction), (low + 1, fraction)):
        column = (neighbour + 1).clamp(0, size + 1).long()
        weights.scatter_add_(2, column[:, :, None], weight[:, :, None])
    return weights[:, :, 1:-1]


def along_axes(volumes: Tensor, weights: Sequence[Tensor]) -> Tensor:
    """Apply one linear map per sample along each spatial axis: a separable filter/resample.

    volumes: [n, C, D, H, W]; weights: three [n, size, size] tensors for D, H, W, each mapping
    input positions (columns) to output positions (rows). Three batched matrix products, each
    contracting the volume's leading spatial axis and appending the result as its last axis
    (D, H, W -> H, W, D' -> W, D', H' -> D', H', W'): both operands are read transposed in
    place, so no per-axis copy of the volume or of a weight broadcast over it is made (0.64
    instead of 1.05 ms for 16 volumes of 32^3 on the 2-core build machine).
    """
    n, channels, *_ = volumes.shape
    x = volumes.reshape(n * channels, *volumes.shape[2:])
    for axis_weights in weights:
        if channels > 1:
            axis_weights = axis_weights.repeat_interleave(channels, dim=0)
        leading, rest = x.shape[1], x.shape[2:]
        moved = x.reshape(n * channels, leading, -1).transpose(1, 2)  # [nC, rest, leading]
        x = torch.bmm(moved, axis_weights.transpose(1, 2)).view(n * channels, *rest, -1)
    return x.view(n, channels, *x.shape[1:])


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

    def change(rows: Tensor, sigma: Tensor) -> Tensor:
        sigma = sigma.flatten().to("cpu", torch.float64)
        weights = [
            to_device(gaussian_blur_weights(size, sigma).float(), rows.device)
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
        if preset not in PRESETS:
            raise ValueError(f"views preset must be one of {sorted(PRESETS)}, got {preset!r}")
        known = {field.name for field in dataclasses.fields(ViewSettings)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(
                f"unknown views setting(s) {unknown}; the settings are {sorted(known)}"
            )
        return cls(dataclasses.replace(PRESETS[preset], **overrides))

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
