"""Spatial operations: composing each sample's crop, flips, rotation, zoom and shift into one
affine, and resampling volumes (and their targets) by it the cheapest exact way for each kind
of affine (copies and flips, separable per-axis products, slice-wise bilinear sampling)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


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
