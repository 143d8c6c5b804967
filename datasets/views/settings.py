"""What a view may do: ``ViewSettings`` (operations, their probabilities and ranges, checked on
construction) and the named presets users choose with ``views.preset``."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

from benchmark.errors import UserError
from benchmark.registry import Registry

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


class ViewSettingError(UserError, ValueError):
    """A views setting (``views.preset`` or an override) that does not exist."""


# Named presets users choose with ``views.preset``; a plugin may register its own. Probabilities
# and ranges cite their source; images are in [0, 1] and 64^3.
PRESETS: Registry[ViewSettings] = Registry("views preset", "views.preset", ViewSettingError)
for _name, _settings in {
    "none": ViewSettings(),
    # docs/protocol.md, Baselines (Bhattacharya et al. 2024, reference code): with p=0.5 one
    # of random affine (scale 0.8-1.2, 10 degrees, 10-voxel shift at 64^3), random flip,
    # Gaussian noise (std up to 0.25), blur, affine+flip. The protocol gives no blur strength
    # or flip axes: the blur sigma is MONAI RandGaussianSmooth's default range, and each axis
    # flips with p=0.5 (so 1 in 8 chosen flips leaves the sample as it is).
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
}.items():
    PRESETS.register(_name, _settings)
