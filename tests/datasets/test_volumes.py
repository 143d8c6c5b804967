"""load_volume / load_mask: orientation, crop, mirror, normalisation, resize, bad files."""

import gzip

import nibabel as nib
import numpy as np
import pytest
from benchmark.datasets.volumes import Preprocessing, VolumeError, load_mask, load_volume
from conftest import LEFT_CENTROID, RIGHT_CENTROID, synthetic_head, write_nifti

NO_CLIP = Preprocessing(size=9, crop=9, clip_percentiles=(0, 100))


def test_round_trip_of_a_sinus_sized_file(tmp_path):
    data = np.random.default_rng(0).normal(size=(9, 9, 9))
    path = write_nifti(tmp_path / "sinus.nii.gz", data)
    loaded = load_volume(path, NO_CLIP)
    assert loaded.dtype == np.float32 and loaded.shape == (9, 9, 9)
    expected = (data - data.min()) / (data.max() - data.min())
    np.testing.assert_allclose(loaded, expected, atol=1e-6)


def test_percentile_clip_and_rescale(tmp_path):
    ramp = np.arange(1000.0).reshape(10, 10, 10)
    path = write_nifti(tmp_path / "ramp.nii", ramp)
    loaded = load_volume(path, Preprocessing(size=10, crop=10))
    low, high = np.percentile(ramp, (1, 99))
    np.testing.assert_allclose(loaded, np.clip((ramp - low) / (high - low), 0, 1), atol=1e-6)
    assert loaded.min() == 0 and loaded.max() == 1
    assert (loaded == 0).sum() == 10 and (loaded == 1).sum() == 10


def test_resize_to_size(tmp_path):
    ramp = np.broadcast_to(np.arange(12.0)[:, None, None], (12, 12, 12))
    loaded = load_volume(write_nifti(tmp_path / "ramp.nii", ramp), Preprocessing(size=6, crop=9))
    assert loaded.shape == (6, 6, 6)
    assert (np.diff(loaded[:, 0, 0]) > 0).all()
    np.testing.assert_allclose(loaded, loaded[:, :1, :1].repeat(6, 1).repeat(6, 2))


def marker_position(volume: np.ndarray) -> tuple[int, ...]:
    return tuple(int(index) for index in np.unravel_index(np.argmax(volume), volume.shape))


def test_right_sinus_is_mirrored_onto_the_left(tmp_path):
    """A marker 2 voxels lateral of the right centroid lands where one 2 voxels lateral of the
    left centroid does: on the low-x side of the crop centre."""
    head, _ = synthetic_head(0)
    offset = np.array([2, 1, -1])
    right, left = head.copy(), head.copy()
    right[tuple(np.add(RIGHT_CENTROID, offset))] = 9
    left[tuple(np.add(LEFT_CENTROID, offset * [-1, 1, 1]))] = 9
    right_path = write_nifti(tmp_path / "right.nii.gz", right)
    left_path = write_nifti(tmp_path / "left.nii.gz", left)
    centre = np.array([4, 4, 4])
    expected = tuple(centre + offset * [-1, 1, 1])
    assert marker_position(load_volume(right_path, NO_CLIP, RIGHT_CENTROID, "R")) == expected
    assert marker_position(load_volume(left_path, NO_CLIP, LEFT_CENTROID, "L")) == expected
    unmirrored = Preprocessing(size=9, crop=9, clip_percentiles=(0, 100), mirror_right=False)
    assert marker_position(load_volume(right_path, unmirrored, RIGHT_CENTROID, "R")) == tuple(
        centre + offset
    )


def stored_variants(canonical: np.ndarray):
    """(name, stored array, affine, stored voxel of canonical voxel v) for RAS, LPS, permuted."""
    ras = np.diag([2.0, 2.0, 2.0, 1.0])
    ras[:3, 3] = [-20, -10, 5]
    nx, ny, _ = canonical.shape
    flip_xy = np.array([[-1, 0, 0, nx - 1], [0, -1, 0, ny - 1], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    # stored[i, j, k] = canonical[j, k, i]: stored voxel (i, j, k) is canonical voxel (j, k, i)
    permute = np.array([[0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1.0]])
    return [
        ("ras", canonical, ras, lambda v: v),
        (
            "lps",
            canonical[::-1, ::-1],
            ras @ flip_xy,
            lambda v: (nx - 1 - v[0], ny - 1 - v[1], v[2]),
        ),
        ("permuted", canonical.transpose(2, 0, 1), ras @ permute, lambda v: (v[2], v[0], v[1])),
    ]


def test_centroids_follow_non_ras_orientations(tmp_path):
    head, _ = synthetic_head(1, anomalous_sides="R")
    head[RIGHT_CENTROID[0] + 2, 9, 7] = 9
    results = {}
    for name, stored, affine, to_stored in stored_variants(head):
        path = write_nifti(tmp_path / f"{name}.nii.gz", stored, affine)
        assert (
            nib.aff2axcodes(nib.load(path).affine)
            == {
                "ras": ("R", "A", "S"),
                "lps": ("L", "P", "S"),
                "permuted": ("S", "R", "A"),
            }[name]
        )
        results[name] = [
            load_volume(path, NO_CLIP, to_stored(centroid), side)
            for side, centroid in (("L", LEFT_CENTROID), ("R", RIGHT_CENTROID))
        ]
    for name in ("lps", "permuted"):
        np.testing.assert_array_equal(results[name][0], results["ras"][0])
        np.testing.assert_array_equal(results[name][1], results["ras"][1])
    assert marker_position(results["ras"][1]) == (2, 5, 3)


def test_mask_takes_the_image_geometry(tmp_path):
    head, mask = synthetic_head(2, anomalous_sides="R")
    image_path = write_nifti(tmp_path / "image.nii.gz", head)
    mask_path = write_nifti(tmp_path / "mask.nii.gz", mask)
    image = load_volume(image_path, NO_CLIP, RIGHT_CENTROID, "R")
    lesion = load_mask(mask_path, NO_CLIP, RIGHT_CENTROID, "R", image_path=image_path)
    assert lesion.dtype == bool and lesion.sum() == mask.sum() == 18
    np.testing.assert_array_equal(lesion, image == 1)
    resized = load_mask(
        mask_path, Preprocessing(size=8, crop=9), RIGHT_CENTROID, "R", image_path=image_path
    )
    assert resized.shape == (8, 8, 8) and resized.any()
    assert not load_mask(mask_path, NO_CLIP, LEFT_CENTROID, "L", image_path=image_path).any()


def expect_volume_error(path, *args, row=7, column="image", **kwargs) -> str:
    with pytest.raises(VolumeError) as caught:
        load_volume(path, Preprocessing(size=8, crop=9), *args, row=row, **kwargs)
    message = str(caught.value)
    assert message.startswith(f"{path} (manifest line {row}, column '{column}'): ")
    return message


def test_unreadable_and_foreign_files(tmp_path):
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"not an image")
    assert "cannot be read as NIfTI" in expect_volume_error(garbage)
    truncated = tmp_path / "truncated.nii.gz"
    write_nifti(truncated, np.random.default_rng(0).normal(size=(16, 16, 16)))
    truncated.write_bytes(gzip.compress(gzip.decompress(truncated.read_bytes())[:2000]))
    assert "voxel data cannot be read" in expect_volume_error(truncated)
    mgh = tmp_path / "head.mgz"
    nib.save(nib.MGHImage(np.ones((4, 4, 4), np.float32), np.eye(4)), mgh)
    assert "is a MGHImage, not NIfTI. Convert it to NIfTI" in expect_volume_error(mgh)


@pytest.mark.parametrize("shape", [(16, 16), (16, 16, 1), (16, 16, 16, 3)])
def test_volumes_that_are_not_3d(tmp_path, shape):
    path = write_nifti(tmp_path / "bad.nii", np.random.default_rng(0).normal(size=shape))
    assert f"has shape {shape}; a 3D volume is needed" in expect_volume_error(path)


def test_trailing_singleton_dimension_is_squeezed(tmp_path):
    data = np.random.default_rng(0).normal(size=(8, 8, 8, 1))
    assert load_volume(write_nifti(tmp_path / "4d.nii", data), NO_CLIP).shape == (9, 9, 9)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_voxels(tmp_path, bad):
    data = np.random.default_rng(0).normal(size=(8, 8, 8))
    data[1, 2, 3] = bad
    path = write_nifti(tmp_path / "bad.nii", data)
    assert "has 1 NaN or infinite voxels" in expect_volume_error(path)


def test_constant_volume_and_constant_crop(tmp_path):
    path = write_nifti(tmp_path / "flat.nii", np.full((8, 8, 8), 3.0))
    assert "it is constant (every voxel is 3)" in expect_volume_error(path)
    head = np.zeros((24, 16, 16))
    head[20:, :, :] = 1
    path = write_nifti(tmp_path / "air.nii", head)
    message = expect_volume_error(path, LEFT_CENTROID, "L")
    assert "the 9-voxel crop around the centroid is constant (every voxel is 0)" in message


def test_centroid_outside_and_crop_leaving_the_volume(tmp_path):
    head, _ = synthetic_head(3)
    path = write_nifti(tmp_path / "head.nii.gz", head)
    message = expect_volume_error(path, (30, 8, -1), "L")
    assert (
        "centroid lies outside the volume: centroid_x=30 (axis size 24), centroid_z=-1" in message
    )
    message = expect_volume_error(path, (3, 8, 14), "L")
    assert "crop around the centroid leaves the volume: centroid_x needs -1..7" in message
    assert "centroid_z needs 10..18 but the volume has 0..15. Move the centroid inward" in message


def test_crop_message_uses_the_stored_grid(tmp_path):
    head, _ = synthetic_head(3)
    _, stored, affine, to_stored = stored_variants(head)[1]
    path = write_nifti(tmp_path / "lps.nii.gz", stored, affine)
    message = expect_volume_error(path, to_stored((3, 8, 8)), "L")
    assert "centroid_x needs 16..24 but the volume has 0..23" in message


def test_mask_on_another_grid(tmp_path):
    image_path = write_nifti(tmp_path / "image.nii", synthetic_head(4)[0])
    mask_path = write_nifti(tmp_path / "mask.nii", np.zeros((24, 16, 15)))
    with pytest.raises(VolumeError) as caught:
        load_mask(mask_path, NO_CLIP, image_path=image_path, row=3)
    assert str(caught.value).startswith(f"{mask_path} (manifest line 3, column 'mask'): ")
    assert "voxel grid (shape (24, 16, 15)) differs from that of its image" in str(caught.value)
