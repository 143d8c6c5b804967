"""Views: batched 3D augmentations; spatial ones shared by image and target, intensity image-only."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from benchmark.datasets.views import (
    PRESETS,
    Views,
    ViewSettings,
    add_gaussian_noise,
    apply_affine,
    compose_affine_matrices,
    draw_view_parameters,
    gaussian_blur,
    trilinear_by_slices,
)

SIDE = 16
SPATIAL_KNOBS = {
    "crop_probability": 0.7,
    "crop_volume_range": (0.4, 1.0),
    "crop_aspect_range": (0.8, 1.25),
    "flip_probability": 0.5,
    "affine_probability": 0.7,
    "max_rotation_degrees": 20.0,
    "scale_range": (0.9, 1.1),
    "max_translation": 0.1,
}
INTENSITY_KNOBS = {
    "gamma_probability": 1.0,
    "gamma_range": (0.5, 2.0),
    "brightness_probability": 1.0,
    "brightness_range": (0.7, 1.3),
    "contrast_probability": 1.0,
    "contrast_range": (0.7, 1.3),
    "blur_probability": 1.0,
    "blur_sigma_range": (0.5, 1.0),
    "noise_probability": 1.0,
    "noise_std_range": (0.05, 0.1),
}
SPATIAL_ONLY = ViewSettings(**SPATIAL_KNOBS)
INTENSITY_ONLY = ViewSettings(**INTENSITY_KNOBS)
SPATIAL_AND_INTENSITY = ViewSettings(**SPATIAL_KNOBS, **INTENSITY_KNOBS)
# Each operation on its own, always applied, with a range that always changes a sample.
EACH_OPERATION = {
    "crop": {"crop_probability": 1.0, "crop_volume_range": (0.3, 0.6)},
    "flip": {"flip_probability": 1.0},
    "affine": {"affine_probability": 1.0, "max_rotation_degrees": 20.0},
    "gamma": {"gamma_probability": 1.0, "gamma_range": (0.5, 0.7)},
    "brightness": {"brightness_probability": 1.0, "brightness_range": (1.2, 1.5)},
    "contrast": {"contrast_probability": 1.0, "contrast_range": (1.2, 1.5)},
    "blur": {"blur_probability": 1.0, "blur_sigma_range": (0.5, 1.0)},
    "noise": {"noise_probability": 1.0, "noise_std_range": (0.05, 0.1)},
}
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def seeded(seed: int = 0) -> torch.Generator:
    """A CPU generator in a known state."""
    return torch.Generator().manual_seed(seed)


def smooth_volumes(batch: int = 4, side: int = SIDE) -> torch.Tensor:
    """[batch, 1, side^3] in [0, 1]: a blob at a different, off-centre place in each sample on
    a ramp, so no flip or rotation maps a sample onto itself."""
    axis = torch.linspace(-1, 1, side)
    d, h, w = torch.meshgrid(axis, axis, axis, indexing="ij")
    centres = (torch.rand(batch, 3, 1, 1, 1, generator=seeded(1)) * 1.2 - 0.6).unbind(dim=1)
    distance = (d - centres[0]) ** 2 + (h - centres[1]) ** 2 + (w - centres[2]) ** 2
    ramp = 0.08 * (d + 1) + 0.04 * (h + 1) + 0.02 * (w + 1)
    return (0.7 * torch.exp(-distance / 0.2) + ramp)[:, None]


def changed(views: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """[B] bool: which samples differ from the input in any voxel."""
    return (views != images).flatten(1).any(dim=1)


def test_none_preset_returns_copies_of_the_inputs():
    images, masks = smooth_volumes(), smooth_volumes() > 0.5
    for views in (Views.from_config(None), Views.from_config({"preset": "none"})):
        image_views, mask_views = views(images, masks, generator=seeded())
        assert torch.equal(image_views, images) and torch.equal(mask_views, masks)
        assert image_views.data_ptr() != images.data_ptr()
        assert mask_views.data_ptr() != masks.data_ptr()


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_shape_dtype_and_device_are_kept_and_inputs_untouched(preset, dtype):
    images = smooth_volumes().to(dtype)
    targets = torch.cat([images.float(), 1 - images.float()], dim=1)
    images_before, targets_before = images.clone(), targets.clone()
    for target in (targets, targets > 0.5, (targets * 10).to(torch.uint8)):
        image_views, target_views = Views(PRESETS[preset])(images, target, generator=seeded())
        assert image_views.shape == images.shape and image_views.dtype == dtype
        assert target_views.shape == target.shape and target_views.dtype == target.dtype
        assert image_views.device == images.device and target_views.device == target.device
        assert torch.isfinite(image_views.float()).all()
    assert torch.equal(images, images_before) and torch.equal(targets, targets_before)


def test_same_generator_state_gives_the_same_views_and_another_seed_other_views():
    images = smooth_volumes()
    views = Views(PRESETS["contrastive"])
    first, _ = views(images, generator=seeded(3))
    again, _ = views(images, generator=seeded(3))
    other, _ = views(images, generator=seeded(4))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    torch.manual_seed(5)
    default_first, _ = views(images)
    torch.manual_seed(5)
    default_again, _ = views(images)
    assert torch.equal(default_first, default_again)


def test_a_float_target_equal_to_the_image_follows_it_exactly():
    images = smooth_volumes(8)
    targets = torch.cat([images, 1 - images], dim=1)
    image_views, target_views = Views(SPATIAL_ONLY)(images, targets, generator=seeded())
    assert changed(image_views, images).all()
    assert torch.equal(target_views[:, :1], image_views)
    assert torch.allclose(target_views[:, 1:], 1 - image_views, atol=1e-6)


def test_a_bool_mask_follows_the_image():
    images = smooth_volumes(8)
    masks = images > 0.5
    image_views, mask_views = Views(SPATIAL_ONLY)(images, masks, generator=seeded())
    assert mask_views.dtype == torch.bool and changed(mask_views, masks).any()
    # Nearest-neighbour mask vs. thresholded trilinear image: they differ only at the edges.
    agreement = (mask_views == (image_views > 0.5)).float().mean()
    assert agreement > 0.97


def test_intensity_operations_leave_the_target_alone():
    images = smooth_volumes(8)
    spatial_views, _ = Views(SPATIAL_ONLY)(images, generator=seeded(2))
    image_views, target_views = Views(SPATIAL_AND_INTENSITY)(images, images, generator=seeded(2))
    # The same spatial transform as with spatial operations only: draws do not depend on the
    # operations enabled; the target got the spatial transform and nothing else.
    assert torch.equal(target_views, spatial_views)
    assert changed(image_views, target_views).all()
    image_views, target_views = Views(INTENSITY_ONLY)(images, images.clone(), generator=seeded())
    assert torch.equal(target_views, images) and changed(image_views, images).all()


def test_a_flip_is_exactly_torch_flip():
    images = smooth_volumes(3)
    flip_height = ViewSettings(flip_probability=1.0, flip_axes=(1,))
    image_views, mask_views = Views(flip_height)(images, images > 0.5, generator=seeded())
    assert torch.equal(image_views, torch.flip(images, [3]))
    assert torch.equal(mask_views, torch.flip(images > 0.5, [3]))
    images = smooth_volumes(16)
    image_views, _ = Views(ViewSettings(flip_probability=0.5))(images, generator=seeded())
    flips = [[2 + axis for axis in range(3) if combination >> axis & 1] for combination in range(8)]
    for image, view in zip(images, image_views):
        assert any(torch.equal(view, torch.flip(image[None], dims)[0]) for dims in flips)


def test_samples_left_alone_are_bitwise_unchanged():
    rarely = {name: 0.1 for name in SPATIAL_KNOBS | INTENSITY_KNOBS if name.endswith("probability")}
    settings = ViewSettings(**SPATIAL_KNOBS | INTENSITY_KNOBS | rarely)
    images = torch.rand(32, 1, 8, 8, 8, generator=seeded())
    image_views, _ = Views(settings)(images, generator=seeded())
    parameters = draw_view_parameters(settings, 32, (8, 8, 8), seeded())
    left_alone = (
        (parameters.matrices == torch.eye(3, 4, dtype=torch.float64)).flatten(1).all(dim=1)
        & (parameters.gamma == 1)
        & (parameters.brightness == 1)
        & (parameters.contrast == 1)
        & (parameters.blur_sigma == 0)
        & (parameters.noise_std == 0)
    )
    assert 0 < left_alone.sum() < 32
    assert torch.equal(image_views[left_alone], images[left_alone])
    assert changed(image_views[~left_alone], images[~left_alone]).all()


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_a_quarter_turn_is_rot90(axis):
    # D differs from H and W: rotations must be rigid in voxel units on any shape.
    shape = (6, 8, 8) if axis == 0 else (8, 8, 8)
    volumes = torch.rand(1, 1, *shape, generator=seeded())
    angle = torch.zeros(1, 3)
    angle[0, axis] = math.pi / 2
    ones, zeros = torch.ones(1, 3), torch.zeros(1, 3)
    rotated = apply_affine(
        volumes, compose_affine_matrices(shape, ones, zeros, ones, angle, ones, zeros)
    )
    plane = [2 + other for other in range(3) if other != axis]
    assert min((rotated - torch.rot90(volumes, k, plane)).abs().max() for k in (1, 3)) < 1e-5


def test_shift_and_crop_read_the_right_voxels():
    volumes = torch.rand(1, 1, 8, 8, 8, generator=seeded())
    ones, zeros = torch.ones(1, 3), torch.zeros(1, 3)
    one_voxel_along_width = torch.tensor([[0.0, 0.0, 1 / 8]])
    matrices = compose_affine_matrices(
        (8, 8, 8), ones, zeros, ones, zeros, ones, one_voxel_along_width
    )
    shifted = apply_affine(volumes, matrices)
    assert torch.allclose(shifted[..., :-1], volumes[..., 1:], atol=1e-6)
    # The far half of every axis, magnified 2x: trilinear resize of that corner (interior only,
    # since the resize clamps at the corner's edge where grid_sample reads the neighbours).
    half, centre = torch.full((1, 3), 0.5), torch.full((1, 3), 0.5)
    matrices = compose_affine_matrices((8, 8, 8), half, centre, ones, zeros, ones, zeros)
    cropped = apply_affine(volumes, matrices)
    corner = F.interpolate(volumes[..., 4:, 4:, 4:], scale_factor=2, mode="trilinear")
    assert torch.allclose(cropped[..., 1:-1, 1:-1, 1:-1], corner[..., 1:-1, 1:-1, 1:-1], atol=1e-6)


@pytest.mark.parametrize("padding_mode", ["border", "zeros", "reflection"])
def test_axis_aligned_affines_resample_exactly_as_grid_sample(padding_mode):
    """Crops, zooms and shifts (with flips) take the separable path; it must be grid_sample's
    trilinear resampling, including outside the volume (zooming out reads the padding)."""
    shape = (6, 10, 12)
    volumes = torch.rand(5, 2, *shape, generator=seeded())
    ones, zeros = torch.ones(5, 3), torch.zeros(5, 3)
    crop_sides = torch.tensor([[0.5, 0.7, 1.0], [1.0, 1.0, 1.0], [0.6, 0.6, 0.6], *[[1.0] * 3] * 2])
    flips = torch.tensor([[1.0, -1.0, 1.0], [-1.0, -1.0, -1.0], *[[1.0] * 3] * 3])
    zoom = torch.tensor([[1.0] * 3, [0.6, 0.8, 1.3], [1.0] * 3, [0.5, 0.5, 0.5], [1.2, 0.9, 0.7]])
    shift = torch.tensor([[0.1, -0.2, 0.05], [0.0] * 3, [0.3, 0.0, -0.3], [0.0] * 3, [-0.4] * 3])
    centres = (1 - crop_sides) * torch.tensor([[0.5, -1.0, 0.0]])
    matrices = compose_affine_matrices(shape, crop_sides, centres, flips, zeros, zoom, shift)
    assert (matrices[:, :, :3] == torch.diag_embed(matrices.diagonal(dim1=1, dim2=2))).all()
    grid = F.affine_grid(matrices.float(), list(volumes.shape), align_corners=False)
    expected = F.grid_sample(volumes, grid, "bilinear", padding_mode, align_corners=False)
    resampled = apply_affine(volumes, matrices, padding_mode=padding_mode)
    torch.testing.assert_close(resampled, expected, atol=2e-5, rtol=0)
    assert torch.equal(
        apply_affine(
            volumes, compose_affine_matrices(shape, ones, zeros, ones, zeros, ones, zeros)
        ),
        volumes,
    )


def test_blur_is_a_replicate_padded_gaussian_convolution_truncated_at_three_sigma():
    volumes = torch.rand(3, 1, 9, 11, 13, generator=seeded())
    sigmas = torch.tensor([0.3, 0.8, 2.0])
    blurred = gaussian_blur(volumes, sigmas)
    for volume, sigma, result in zip(volumes, sigmas.tolist(), blurred):
        radius = max(1, math.ceil(3 * sigma))
        taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1) / sigma) ** 2)
        taps = taps / taps.sum()
        expected = volume[None]
        for axis in range(3):
            shape = [1, 1, 1, 1, 1]
            shape[2 + axis] = len(taps)
            padding = [0] * 6
            padding[4 - 2 * axis : 6 - 2 * axis] = [radius, radius]
            expected = F.conv3d(F.pad(expected, padding, mode="replicate"), taps.view(shape))
        torch.testing.assert_close(result[None], expected, atol=1e-6, rtol=0)


def test_blur_smooths_per_sample_and_sigma_zero_is_identity():
    volumes = torch.rand(3, 2, SIDE, SIDE, SIDE, generator=seeded())
    blurred = gaussian_blur(volumes, torch.tensor([0.0, 0.5, 1.5]))
    assert torch.equal(blurred[0], volumes[0])
    variances = blurred.var(dim=(1, 2, 3, 4))
    assert variances[2] < variances[1] < volumes[1].var()
    assert torch.allclose(blurred[1:2], gaussian_blur(volumes[1:2], 0.5), atol=1e-6)
    delta = torch.zeros(1, 1, SIDE, SIDE, SIDE)
    delta[..., SIDE // 2, SIDE // 2, SIDE // 2] = 1
    spread = gaussian_blur(delta, 1.0)[0, 0]
    offsets = (torch.arange(SIDE) - SIDE // 2).float() ** 2
    assert abs(spread.sum() - 1) < 1e-5
    for axis in range(3):
        profile = spread.sum(dim=tuple(other for other in range(3) if other != axis))
        assert abs((profile * offsets).sum() - 1.0) < 0.05  # variance = sigma^2


def test_noise_has_the_configured_std():
    zeros = torch.zeros(4, 1, SIDE, SIDE, SIDE)
    noisy = add_gaussian_noise(zeros, torch.tensor([0.2, 0.05, 0.0, 0.1]), seeded())
    assert torch.equal(noisy[2], zeros[2])
    for row, std in ((0, 0.2), (1, 0.05), (3, 0.1)):
        assert abs(noisy[row].std() - std) < 0.05 * std and abs(noisy[row].mean()) < 0.05 * std
    views = Views(ViewSettings(noise_probability=1.0, noise_std_range=(0.25, 0.25)))
    noisy, _ = views(zeros, generator=seeded())
    assert abs(noisy.std() - 0.25) < 0.01


@pytest.mark.parametrize("operation", sorted(EACH_OPERATION))
def test_probability_one_changes_every_sample_and_zero_none(operation):
    images = smooth_volumes(8)
    always = ViewSettings(**EACH_OPERATION[operation])
    views, _ = Views(always)(images, generator=seeded())
    assert changed(views, images).all()
    never = dataclasses.replace(always, **{f"{operation}_probability": 0.0})
    views, _ = Views(never)(images, generator=seeded())
    assert torch.equal(views, images)


@pytest.mark.parametrize("operation", ["affine", "noise", "blur"])
def test_probability_one_half_changes_about_half(operation):
    images = smooth_volumes(200, side=8)
    settings = ViewSettings(**EACH_OPERATION[operation] | {f"{operation}_probability": 0.5})
    views, _ = Views(settings)(images, generator=seeded())
    assert 0.4 < changed(views, images).float().mean() < 0.6


def test_paper_preset_applies_one_operation_to_about_half_the_samples():
    images = smooth_volumes(400, side=8)
    views, _ = Views(PRESETS["paper"])(images, generator=seeded())
    # With p=0.5 one of five choices; 1 in 8 chosen flips keeps every axis: 0.5 * 0.975.
    assert 0.42 < changed(views, images).float().mean() < 0.56
    parameters = draw_view_parameters(PRESETS["paper"], 2000, (8, 8, 8), seeded())
    noise, blur = parameters.noise_std > 0, parameters.blur_sigma > 0
    identity = torch.eye(3, 4, dtype=torch.float64)
    spatial = (parameters.matrices != identity).flatten(1).any(dim=1)
    assert not (noise & blur).any() and not ((noise | blur) & spatial).any()
    assert 0.08 < noise.double().mean() < 0.12 and 0.08 < blur.double().mean() < 0.12


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("noise_probability", 1.5),
        ("crop_probability", -0.1),
        ("blur_probability", "often"),
        ("crop_volume_range", (0.0, 1.0)),
        ("crop_volume_range", (0.8, 0.5)),
        ("crop_aspect_range", (1.2, 1.5)),
        ("max_rotation_degrees", 270.0),
        ("scale_range", (0.0, 1.2)),
        ("scale_range", (1.2,)),
        ("max_translation", 2.0),
        ("padding_mode", "mirror"),
        ("flip_axes", (0, 3)),
        ("flip_axes", (1, 1)),
        ("gamma_range", (0.0, 1.0)),
        ("blur_sigma_range", (0.0, 20.0)),
        ("noise_std_range", (-0.1, 0.1)),
        ("isotropic_scale", "yes"),
        ("one_of", ("spin",)),
        ("one_of", "noise"),
        ("flip_axes", 1),
        ("one_of_probability", 2.0),
    ],
)
def test_a_bad_setting_raises_value_error_naming_it(setting, value):
    with pytest.raises(ValueError, match=setting):
        ViewSettings(**{setting: value})


def test_one_of_needs_its_operations_enabled():
    with pytest.raises(ValueError, match="noise_probability"):
        ViewSettings(one_of=("noise",))


def test_from_config_takes_a_preset_and_overrides():
    views = Views.from_config({"preset": "contrastive", "noise_probability": 0.0, "flip_axes": [0]})
    expected = dataclasses.replace(PRESETS["contrastive"], noise_probability=0.0, flip_axes=(0,))
    assert views.settings == expected
    assert Views.from_config({"noise_probability": 1.0}).settings.noise_probability == 1.0
    with pytest.raises(ValueError, match="noise_sigma"):
        Views.from_config({"preset": "paper", "noise_sigma": 0.1})
    with pytest.raises(ValueError, match="strong"):
        Views.from_config({"preset": "strong"})


def test_bad_batches_are_rejected():
    views = Views(PRESETS["contrastive"])
    with pytest.raises(ValueError, match="images"):
        views(torch.rand(2, SIDE, SIDE, SIDE))
    with pytest.raises(ValueError, match="targets"):
        views(torch.rand(2, 1, SIDE, SIDE, SIDE), torch.rand(2, 1, SIDE, SIDE, 8))


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_views_match_cpu_views(dtype):
    images = smooth_volumes(8)
    masks = images > 0.5
    cpu_views, cpu_masks = Views(SPATIAL_ONLY)(images, masks, generator=seeded())
    gpu_views, gpu_masks = Views(SPATIAL_ONLY)(images.cuda().to(dtype), masks.cuda(), seeded())
    assert gpu_views.device.type == "cuda" and gpu_views.dtype == dtype
    assert torch.allclose(
        gpu_views.float().cpu(), cpu_views, atol=2e-2 if dtype != torch.float32 else 1e-4
    )
    assert (gpu_masks.cpu() == cpu_masks).float().mean() > 0.99
    views = Views(PRESETS["contrastive"])
    first, _ = views(images.cuda(), generator=seeded(7))
    again, _ = views(images.cuda(), generator=seeded(7))
    assert torch.equal(first, again)


@pytest.mark.parametrize("padding_mode", ["border", "zeros", "reflection"])
def test_rotations_resample_as_grid_sample(padding_mode):
    """Rotated (with crops, zooms and shifts) samples take `trilinear_by_slices`; it must be
    grid_sample's trilinear resampling, including outside the volume, up to the rounding of its
    tall image's row coordinate (about 1e-5 of a voxel at this size)."""
    shape = (7, 10, 12)
    volumes = torch.rand(6, 2, *shape, generator=seeded())
    generator = seeded()
    angles = (torch.rand(6, 3, generator=generator) - 0.5) * 2.0
    zoom = 0.6 + 0.8 * torch.rand(6, 3, generator=generator)
    shift = (torch.rand(6, 3, generator=generator) - 0.5) * 0.8
    crop_sides = 0.5 + 0.5 * torch.rand(6, 3, generator=generator)
    centres = (1 - crop_sides) * (2 * torch.rand(6, 3, generator=generator) - 1)
    flips = torch.where(torch.rand(6, 3, generator=generator) < 0.5, -1.0, 1.0)
    matrices = compose_affine_matrices(shape, crop_sides, centres, flips, angles, zoom, shift)
    grid = F.affine_grid(matrices.float(), list(volumes.shape), align_corners=False)
    expected = F.grid_sample(volumes, grid, "bilinear", padding_mode, align_corners=False)
    resampled = apply_affine(volumes, matrices, padding_mode=padding_mode)
    torch.testing.assert_close(resampled, expected, atol=5e-5, rtol=0)
    assert torch.equal(trilinear_by_slices(volumes, matrices, padding_mode), resampled)
