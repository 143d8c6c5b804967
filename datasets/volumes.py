"""One NIfTI volume -> one preprocessed sinus sample, as in the paper (docs/protocol.md, "Data").

The steps, in order: load with nibabel; reorient to canonical RAS+ so that axis 0 is the
left-right axis whatever the file's own orientation; crop a `crop`-voxel cube around the
sinus centroid (65 voxels in the paper); mirror right sinuses on the left-right axis so every
sample looks like a left sinus; clip to the 1st-99th percentile and rescale to [0, 1]; resize
trilinearly to `size` (65^3 -> 64^3 in the paper). Masks take the same geometric steps and no
intensity step. Every check that needs the volume's content happens here and raises a
`VolumeError` naming the file and the manifest line.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

from benchmark.errors import UserError

from .manifest import CENTROID_COLUMNS


@dataclass(frozen=True)
class Preprocessing:
    """How volumes become samples; every field is part of the cohort cache key.

    Defaults follow docs/protocol.md: a 65-voxel crop, 1st-99th percentile clipping, resize to 64^3,
    right sinuses mirrored to look like left ones.
    """

    size: int = 64
    crop: int = 65
    clip_percentiles: tuple[float, float] = (1.0, 99.0)
    mirror_right: bool = True

    def __post_init__(self):
        # Plain types, so that settings from a YAML list or integers give the same cache key.
        object.__setattr__(self, "clip_percentiles", tuple(map(float, self.clip_percentiles)))
        object.__setattr__(self, "mirror_right", bool(self.mirror_right))
        if self.size < 1 or self.crop < 1:
            raise ValueError(f"size and crop must be positive, not {self.size} and {self.crop}")
        low, high = self.clip_percentiles
        if not 0 <= low < high <= 100:
            raise ValueError(
                f"clip_percentiles must satisfy 0 <= low < high <= 100, not {low, high}"
            )


class VolumeError(UserError, ValueError):
    """A volume that cannot be used: names the file, the manifest line and the column."""

    def __init__(self, path: str | Path, message: str, fix: str, row: int | None, column: str):
        self.path, self.row, self.column = Path(path), row, column
        self.message, self.fix = message, fix
        where = f" (manifest line {row}, column '{column}')" if row is not None else ""
        super().__init__(f"{self.path}{where}: {message}. {fix}")


@dataclass(frozen=True)
class Sample:
    """One preprocessed image and where it came from.

    `voxels`: the `[size, size, size]` float32 sample in [0, 1]; `extent`: its voxels per axis
    before resizing (the crop, or the whole volume without a centroid); `image_sha256` and
    `sample_sha256`: SHA-256 of the canonical (RAS+) float32 voxels, with their shape, of the
    whole file and of the crop before mirroring, clipping and resizing. The digests identify
    the data whatever the file name, format, data type or preprocessing settings (the leak check
    compares them, `datasets/run_checks.py`).
    """

    voxels: np.ndarray
    extent: tuple[int, int, int]
    image_sha256: str
    sample_sha256: str


def load_volume(
    path: str | Path,
    preprocessing: Preprocessing,
    centroid: tuple[float, float, float] | None = None,
    side: str = "",
    *,
    row: int | None = None,
) -> np.ndarray:
    """Load one image as a `[size, size, size]` float32 array in [0, 1] (see `load_sample`)."""
    return load_sample(path, preprocessing, centroid, side, row=row).voxels


def load_sample(
    path: str | Path,
    preprocessing: Preprocessing,
    centroid: tuple[float, float, float] | None = None,
    side: str = "",
    *,
    row: int | None = None,
) -> Sample:
    """Load one image as a `Sample`.

    `centroid` is in the stored file's own voxel grid (as a viewer shows it); without one the
    whole volume is used (a file that already holds one sinus). `row` is the manifest line,
    used in error messages only.
    """
    volume = _Canonical.read(path, row, "image")
    region = volume.data if centroid is None else volume.crop(centroid, preprocessing.crop)
    data = volume.mirror(region, preprocessing, side)
    if data.min() == data.max():
        cropped = centroid is not None
        where = f"the {preprocessing.crop}-voxel crop around the centroid" if cropped else "it"
        raise volume.error(
            f"{where} is constant (every voxel is {data.min():g})",
            "Check the file" + (" and that the centroid lies on the sinus." if cropped else "."),
        )
    voxels = _resize(_clip_and_rescale(data, preprocessing.clip_percentiles), preprocessing.size)
    return Sample(
        voxels=voxels,
        extent=tuple(int(n) for n in data.shape),
        image_sha256=voxel_sha256(volume.data),
        sample_sha256=voxel_sha256(region),
    )


def voxel_sha256(data: np.ndarray) -> str:
    """SHA-256 of an array's shape and float32 voxels (C order)."""
    digest = hashlib.sha256(repr(tuple(data.shape)).encode())
    digest.update(np.ascontiguousarray(data, dtype=np.float32).tobytes())
    return digest.hexdigest()


def load_mask(
    path: str | Path,
    preprocessing: Preprocessing,
    centroid: tuple[float, float, float] | None = None,
    side: str = "",
    *,
    image_path: str | Path,
    row: int | None = None,
) -> np.ndarray:
    """Load the anomaly mask of `image_path` as a `[size, size, size]` bool array.

    The mask must share its image's voxel grid (shape and affine); it goes through the same
    reorientation, crop and mirror, and is resized trilinearly and thresholded at 0.5 so that
    its boundary lands where the resized image's does. Any non-zero voxel counts as anomalous.
    """
    mask = _Canonical.read(path, row, "mask")
    image = nib.squeeze_image(nib.load(image_path))
    if mask.stored_shape != image.shape or not np.allclose(mask.affine, image.affine, atol=1e-3):
        raise mask.error(
            f"its voxel grid (shape {mask.stored_shape}) differs from that of its image "
            f"{str(image_path)!r} (shape {image.shape})",
            "Save the mask on the image's grid (same shape and affine).",
        )
    data = (mask.crop_and_mirror(preprocessing, centroid, side) != 0).astype(np.float32)
    return _resize(data, preprocessing.size) > 0.5


@dataclass
class _Canonical:
    """A validated volume reoriented to RAS+, with the map from stored to canonical voxels."""

    path: Path
    row: int | None
    column: str
    data: np.ndarray
    stored_shape: tuple[int, ...]
    affine: np.ndarray
    stored_to_canonical: np.ndarray

    @classmethod
    def read(cls, path: str | Path, row: int | None, column: str) -> _Canonical:
        def error(message: str, fix: str) -> VolumeError:
            return VolumeError(path, message, fix, row, column)

        try:
            image = nib.load(path)
        except Exception as reason:  # noqa: BLE001 - nibabel raises many types
            raise error(f"cannot be read as NIfTI ({reason})", "Check the file.") from None
        if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
            raise error(f"is a {type(image).__name__}, not NIfTI", "Convert it to NIfTI.")
        image = nib.squeeze_image(image)
        if image.ndim != 3 or min(image.shape) < 2:
            raise error(
                f"has shape {image.shape}; a 3D volume is needed",
                "Give one 3D volume per row (4D series and 2D slices are not supported).",
            )
        try:
            canonical = nib.as_closest_canonical(image)
            data = np.asarray(canonical.get_fdata(dtype=np.float32))
        except Exception as reason:  # noqa: BLE001 - truncated data raise many types
            raise error(f"its voxel data cannot be read ({reason})", "Check the file.") from None
        bad_voxels = int(data.size - np.isfinite(data).sum())
        if bad_voxels:
            raise error(f"has {bad_voxels} NaN or infinite voxels", "Fix or replace the file.")
        return cls(
            path=Path(path),
            row=row,
            column=column,
            data=data,
            stored_shape=image.shape,
            affine=image.affine,
            stored_to_canonical=np.linalg.inv(canonical.affine) @ image.affine,
        )

    def error(self, message: str, fix: str) -> VolumeError:
        return VolumeError(self.path, message, fix, self.row, self.column)

    def crop_and_mirror(
        self, preprocessing: Preprocessing, centroid: tuple[float, float, float] | None, side: str
    ) -> np.ndarray:
        """The crop cube around `centroid` (the whole volume without one), mirrored if right."""
        data = self.data if centroid is None else self.crop(centroid, preprocessing.crop)
        return self.mirror(data, preprocessing, side)

    @staticmethod
    def mirror(data: np.ndarray, preprocessing: Preprocessing, side: str) -> np.ndarray:
        """`data` flipped on the left-right axis for a right side (when mirroring is on)."""
        if side == "R" and preprocessing.mirror_right:
            data = data[::-1]
        return np.ascontiguousarray(data)

    def crop(self, centroid: tuple[float, float, float], crop: int) -> np.ndarray:
        stored = np.asarray(centroid, dtype=float)
        outside = [
            f"{name}={value:g} (axis size {size})"
            for name, value, size in zip(CENTROID_COLUMNS, stored, self.stored_shape)
            if not 0 <= value <= size - 1
        ]
        if outside:
            raise self.error(
                f"the centroid lies outside the volume: {', '.join(outside)}",
                "Give the centroid as voxel indices in this file's own voxel grid.",
            )
        centre = np.rint(
            self.stored_to_canonical[:3, :3] @ stored + self.stored_to_canonical[:3, 3]
        )
        start = centre.astype(int) - crop // 2
        stop = start + crop
        if (start < 0).any() or (stop > self.data.shape).any():
            raise self.error(self._crop_overhang(start, stop, crop), "Move the centroid inward.")
        return self.data[start[0] : stop[0], start[1] : stop[1], start[2] : stop[2]]

    def _crop_overhang(self, start: np.ndarray, stop: np.ndarray, crop: int) -> str:
        """Which stored axes the crop cube [start, stop) (canonical voxels) leaves, and how far."""
        canonical_to_stored = np.linalg.inv(self.stored_to_canonical)
        corners = [canonical_to_stored @ [*start, 1], canonical_to_stored @ [*(stop - 1), 1]]
        low, high = np.rint(np.minimum(*corners)[:3]), np.rint(np.maximum(*corners)[:3])
        overhangs = [
            f"{name} needs {low[axis]:g}..{high[axis]:g} but the volume has 0..{size - 1}"
            for axis, (name, size) in enumerate(zip(CENTROID_COLUMNS, self.stored_shape))
            if low[axis] < 0 or high[axis] > size - 1
        ]
        return f"the {crop}-voxel crop around the centroid leaves the volume: " + "; ".join(
            overhangs
        )


def _clip_and_rescale(data: np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    """Clip to the given percentiles and rescale to [0, 1] (docs/protocol.md: 1st-99th).

    When the percentiles coincide (a mostly constant sample with a few outliers) the minimum and
    maximum are used instead, so the sample is still rescaled rather than divided by zero.
    """
    low, high = np.percentile(data, percentiles)
    if high <= low:
        low, high = data.min(), data.max()
    return ((np.clip(data, low, high) - low) / (high - low)).astype(np.float32)


def _resize(data: np.ndarray, size: int) -> np.ndarray:
    """Trilinear resize to a `size`^3 cube (a no-op when the shape already matches)."""
    if data.shape == (size, size, size):
        return data
    tensor = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))[None, None]
    resized = F.interpolate(tensor, size=(size,) * 3, mode="trilinear", align_corners=False)
    return resized[0, 0].numpy()
