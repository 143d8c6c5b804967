"""Drawing one phantom midface: two maxillary sinuses, their surroundings and their findings.

Everything is drawn in world millimetres (RAS: +x the subject's right, +y anterior, +z
superior) on the voxel grid of a head volume, then blurred, given a bias field and Rician noise
the way a 3D FLAIR acquisition would be. Intensities are FLAIR-like before the loader's
percentile rescaling: air and cortical bone dark, muscle and soft tissue intermediate, fat
bright, vitreous dark (fluid is suppressed), inflamed mucosa and proteinaceous secretions
intermediate to bright.

Anatomy of a maxillary sinus (the largest paranasal sinus; adult size roughly 35 mm high,
30 mm wide and 35 mm deep): a pyramid with its base on the lateral nasal wall (medial) and its
apex in the zygomatic process (lateral); the roof is the orbital floor, the floor the alveolar
process of the maxilla above the tooth roots. Each sinus is described in a local frame whose
x axis points medially, so the right sinus is the mirror image of the left one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

# FLAIR-like intensities of the tissues (before per-subject jitter and the loader's rescaling).
AIR = 0.02
CORTICAL_BONE = 0.08
VITREOUS = 0.12
MUSCLE = 0.36
SOFT_TISSUE = 0.45
NORMAL_MUCOSA = 0.48
MARROW = 0.58
FAT = 0.78
INFLAMED_MUCOSA = 0.68
POLYP = 0.6
CYST_FLUID = 0.66
SECRETIONS = 0.6


@dataclass
class Finding:
    """One anomaly of a sinus: its kind and where/how large it is (local frame, mm)."""

    kind: str  # one of phantom.PATHOLOGIES
    size_mm: float  # rim thickness, or lesion radius
    direction: np.ndarray | None = None  # unit vector from the cavity centre to the wall site
    intensity: float = 0.0


@dataclass
class SinusAnatomy:
    """Shape, pose and contents of one maxillary sinus."""

    side: str  # "L" or "R"
    centre_mm: np.ndarray  # world position of the cavity centre
    semi_axes_mm: np.ndarray  # (mediolateral, anteroposterior, craniocaudal) half sizes
    rotation: np.ndarray  # 3x3, local -> world (before the mirror of the right side)
    squareness: float  # exponent of the superellipsoid: 2 = ellipsoid, larger = boxier
    wall_mm: float  # bony wall thickness
    mucosa_mm: float  # physiological mucosa (normal up to ~2-3 mm)
    deformation: float  # amplitude of the irregular outline
    septum: tuple[np.ndarray, np.ndarray] | None = None  # (normal, lateral direction) of a septum
    findings: list[Finding] = field(default_factory=list)


@dataclass
class Head:
    """A subject's midface: both sinuses, tissue intensities and acquisition effects."""

    sinuses: list[SinusAnatomy]
    tissue_gain: dict[str, float]
    noise_sigma: float
    blur_sigma_voxels: float
    bias_strength: float
    seed: int


def smooth_field(shape: tuple[int, ...], rng: np.random.Generator, cells: int = 4) -> np.ndarray:
    """A smooth random field in about [-1, 1] over a volume of ``shape``.

    A coarse Gaussian grid of ``cells`` per axis is refined by cubic splines to twice as many
    cells (cheap at that size), then interpolated trilinearly to the full grid.
    """
    coarse = rng.standard_normal((cells,) * 3)
    refined = ndimage.zoom(coarse, 2, order=3, mode="nearest")
    full = F.interpolate(
        torch.from_numpy(refined)[None, None],
        size=tuple(shape),
        mode="trilinear",
        align_corners=True,
    )
    return np.clip(full[0, 0].numpy() / 1.5, -1.5, 1.5)


def _local_coordinates(grid: np.ndarray, sinus: SinusAnatomy) -> np.ndarray:
    """World points ``[3, ...]`` in the sinus frame (x medial, y anterior, z superior)."""
    offset = grid - sinus.centre_mm.reshape(3, *([1] * (grid.ndim - 1)))
    if sinus.side == "R":  # the right sinus's medial direction is -x
        offset = offset * np.array([-1.0, 1.0, 1.0]).reshape(3, *([1] * (grid.ndim - 1)))
    return np.tensordot(sinus.rotation.T, offset, axes=1)


def cavity_level(local: np.ndarray, sinus: SinusAnatomy, wobble: np.ndarray) -> np.ndarray:
    """< 1 inside the air cavity: a superellipsoid that narrows towards the lateral apex."""
    a, b, c = sinus.semi_axes_mm
    towards_base = np.clip((local[0] + a) / (2 * a), 0, 1)  # 0 at the apex, 1 at the base
    taper = 0.45 + 0.55 * towards_base**0.7
    n = sinus.squareness
    level = (
        np.abs(local[0] / a) ** n
        + np.abs(local[1] / (b * taper)) ** n
        + np.abs(local[2] / (c * taper)) ** n
    ) ** (1 / n)
    return level + sinus.deformation * wobble


def _ball(local: np.ndarray, centre: np.ndarray, radius: float, flatten: float = 1.0) -> np.ndarray:
    d = local - centre.reshape(3, *([1] * (local.ndim - 1)))
    return (d[0] ** 2 + d[1] ** 2 + (d[2] / flatten) ** 2) < radius**2


def _wall_point(cavity: np.ndarray, local: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """The cavity voxel (local mm) furthest along ``direction``: where a lesion sits on the wall."""
    flat = local.reshape(3, -1)[:, cavity.ravel()]
    return flat[:, np.argmax(direction @ flat)]


def draw_sinus(
    image: np.ndarray,
    grid: np.ndarray,
    spacing: float,
    sinus: SinusAnatomy,
    gain: dict[str, float],
    rng: np.random.Generator,
) -> np.ndarray:
    """Paint one sinus with its wall, mucosa, variants and findings into ``image``.

    Returns the boolean anomaly mask of this sinus (empty for a normal one).
    """
    local = _local_coordinates(grid, sinus)
    wobble = smooth_field(image.shape, rng, cells=6)
    level = cavity_level(local, sinus, wobble)
    cavity = level < 1
    if not cavity.any():  # a window of the head that does not reach this sinus
        return np.zeros(image.shape, dtype=bool)
    depth = ndimage.distance_transform_edt(cavity) * spacing  # mm inside the cavity
    outside = ndimage.distance_transform_edt(~cavity) * spacing  # mm outside it
    mask = np.zeros(image.shape, dtype=bool)

    image[(outside > 0) & (outside <= sinus.wall_mm)] = CORTICAL_BONE * gain["bone"]
    image[cavity] = AIR
    texture = smooth_field(image.shape, rng, cells=8)
    mucosa = cavity & (depth <= sinus.mucosa_mm * (0.8 + 0.4 * (texture + 1) / 2))
    image[mucosa] = NORMAL_MUCOSA * gain["mucosa"]
    if sinus.septum is not None:
        normal, lateral = sinus.septum
        plane = np.tensordot(normal, local, axes=1)
        reach = np.tensordot(lateral, local, axes=1)
        septum = cavity & (np.abs(plane) < 0.7) & (reach > 0)
        image[cavity & (np.abs(plane) < 1.4) & (reach > 0)] = NORMAL_MUCOSA * gain["mucosa"]
        image[septum] = CORTICAL_BONE * gain["bone"]

    for finding in sinus.findings:
        if finding.kind == "opacification":
            region = cavity
            image[region] = finding.intensity * (1 + 0.12 * texture[region])
        elif finding.kind == "mucosal_thickening":
            # A wall-parallel rim of varying thickness, thickest towards the floor.
            floor_weight = 1 + 0.5 * np.clip(-local[2] / sinus.semi_axes_mm[2], 0, 1)
            thickness = finding.size_mm * (0.55 + 0.45 * (texture + 1) / 2) * floor_weight
            region = cavity & (depth <= thickness)
            image[region] = finding.intensity * (1 + 0.08 * texture[region])
        else:
            # Polyps: small rounded lesions on the wall; retention cysts: fluid domes, usually
            # on the floor. Both grow from a wall point into the cavity.
            site = _wall_point(cavity, local, finding.direction)
            inward = -finding.direction
            shift = 0.45 if finding.kind == "polyp" else 0.15
            centre = site + inward * finding.size_mm * shift
            flatten = 0.8 if finding.kind == "retention_cyst" else 1.0
            region = cavity & _ball(local, centre, finding.size_mm, flatten)
            variation = 0.02 if finding.kind == "retention_cyst" else 0.08
            image[region] = finding.intensity * (1 + variation * texture[region])
        mask |= region
    return mask


def _ellipsoid(grid: np.ndarray, centre, semi_axes) -> np.ndarray:
    """Level of an axis-aligned ellipsoid on ``grid``: < 1 inside."""
    return sum(((grid[k] - centre[k]) / semi_axes[k]) ** 2 for k in range(3))


def draw_surroundings(image: np.ndarray, grid: np.ndarray, head: Head) -> None:
    """Soft tissue, nasal cavity with turbinates, orbits, cheek fat, alveolar bone and teeth."""
    gain = head.tissue_gain
    x = grid[0]
    image[...] = SOFT_TISSUE * gain["soft"]
    left, right = head.sinuses
    mid = (left.centre_mm + right.centre_mm) / 2
    a, b, c = np.mean([s.semi_axes_mm for s in head.sinuses], axis=0)
    # Nasal cavity between the sinuses: air either side of the bony septum, with three
    # turbinates (mucosa-covered scrolls) hanging from each lateral nasal wall.
    nasal = _ellipsoid(grid, mid + [0, 2, -2], (10.5, b + 12, c + 5)) < 1
    image[nasal] = AIR
    for level in (-0.55 * c, 0.0, 0.5 * c):
        for lateral in (-1, 1):
            turbinate = mid + [lateral * 7.5, 0, level]
            image[nasal & (_ellipsoid(grid, turbinate, (3.5, b + 6, 3.2)) < 1)] = (
                NORMAL_MUCOSA * gain["mucosa"] * 1.1
            )
    image[nasal & (np.abs(x - mid[0]) < 1.1)] = CORTICAL_BONE * gain["bone"]
    for sinus in head.sinuses:
        lateral = -1.0 if sinus.side == "L" else 1.0
        centre = sinus.centre_mm
        sa, sb, sc = sinus.semi_axes_mm
        # Masticatory muscles behind and lateral to the sinus.
        muscle = centre + [lateral * (sa + 6), -(sb + 10), -2]
        image[_ellipsoid(grid, muscle, (9, 10, sc + 8)) < 1] = MUSCLE * gain["muscle"]
        # Cheek: subcutaneous fat in a curved band lateral and anterior to the sinus.
        face = _ellipsoid(grid, centre + [lateral * 2, -4, 0], (sa + 15, sb + 14, sc + 14))
        image[(face > 1) & (face < 1.7) & (lateral * (x - centre[0]) > -4)] = FAT * gain["fat"]
        # Orbit above the roof: fat around the globe (vitreous is dark on FLAIR).
        orbit_centre = centre + [-lateral * 1, 2, sc + 17]
        image[_ellipsoid(grid, orbit_centre, (sa + 2, sb + 3, 14)) < 1] = FAT * gain["fat"]
        image[_ellipsoid(grid, orbit_centre + [0, -3, -9], (5, sb, 3)) < 1] = (
            MUSCLE * gain["muscle"]
        )
        globe = _ellipsoid(grid, orbit_centre + [0, sb * 0.6, 3], (11, 11, 11))
        image[globe < 1.2] = SOFT_TISSUE * gain["soft"]
        image[globe < 1] = VITREOUS
        # Alveolar process below the floor: marrow in a cortical shell, with tooth roots.
        process = _ellipsoid(grid, centre + [-lateral * 1, 0, -sc - 12], (sa + 1, sb + 4, 9))
        image[process < 1] = CORTICAL_BONE * gain["bone"]
        image[process < 0.7] = MARROW * gain["marrow"]
        for offset in np.linspace(-0.6, 0.6, 4) * sb:
            root = _ellipsoid(grid, centre + [0, offset, -sc - 15], (2.2, 2.2, 7))
            image[(root < 1) & (process < 1)] = CORTICAL_BONE * gain["bone"]


def acquire(image: np.ndarray, head: Head, rng: np.random.Generator) -> np.ndarray:
    """Blur (point-spread), a smooth multiplicative bias field, then Rician magnitude noise."""
    image = ndimage.gaussian_filter(image, head.blur_sigma_voxels)
    image = image * (1 + head.bias_strength * smooth_field(image.shape, rng, cells=3))
    real = image + head.noise_sigma * rng.standard_normal(image.shape)
    imaginary = head.noise_sigma * rng.standard_normal(image.shape)
    return np.sqrt(real**2 + imaginary**2).astype(np.float32)


def _window(grid: np.ndarray, spacing: float, sinus: SinusAnatomy) -> tuple[slice, ...]:
    """The part of the grid that can hold this sinus, its wall and its findings."""
    reach = 1.5 * float(sinus.semi_axes_mm.max()) + sinus.wall_mm + 3 * spacing
    origin = grid[:, 0, 0, 0]
    low = np.floor((sinus.centre_mm - reach - origin) / spacing).astype(int)
    low = np.minimum(low, grid.shape[1:])
    high = np.ceil((sinus.centre_mm + reach - origin) / spacing).astype(int) + 1
    return tuple(
        slice(max(0, lo), min(size, hi)) for lo, hi, size in zip(low, high, grid.shape[1:])
    )


def draw_head(
    head: Head, grid: np.ndarray, spacing: float, stream: int = 0
) -> tuple[np.ndarray, list[np.ndarray]]:
    """The noisy head image on ``grid`` and the anomaly mask of each sinus (left, right).

    ``grid`` (``[3, X, Y, Z]`` world mm) may cover the whole head or only a window of it; the
    anatomy is the same either way, textures and noise come from the random ``stream``.
    """
    rng = np.random.default_rng([head.seed, stream])
    image = np.empty(grid.shape[1:], dtype=np.float64)
    draw_surroundings(image, grid, head)
    masks = []
    for sinus in head.sinuses:
        window = _window(grid, spacing, sinus)
        if any(part.start >= part.stop for part in window):
            masks.append(np.zeros(image.shape, dtype=bool))
            continue
        mask = np.zeros(image.shape, dtype=bool)
        mask[window] = draw_sinus(
            image[window], grid[(slice(None), *window)], spacing, sinus, head.tissue_gain, rng
        )
        masks.append(mask)
    return acquire(image, head, rng), masks
