"""Patches from any image: centred on the point whatever the direction matrix, and the way back."""
import numpy as np
import pytest
import SimpleITK as sitk
from xaiexplain.data.patches import FIELD_OF_VIEW_MM, PATCH_SIZE, PatchError, backproject, extract_patch, extract_stack


def rotation(axis: int, degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    c, s = np.cos(a), np.sin(a)
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


DIRECTIONS = {
    "identity": np.eye(3),
    "flipped x and z": np.diag([-1.0, 1.0, -1.0]),
    "flipped y": np.diag([1.0, -1.0, 1.0]),
    "oblique": rotation(2, 25) @ rotation(0, 10),
    "oblique and flipped": rotation(2, -35) @ np.diag([-1.0, -1.0, 1.0]),
}


def ball_image(direction: np.ndarray, center_index=(50, 60, 15), size=(110, 120, 30),
               spacing=(0.7, 0.8, 1.5), origin=(-40.0, 25.0, -300.0), radius_mm=5.0):
    """An image with a ball of +50 HU in -850 HU lung, and a small marker 12 mm towards +y of it."""
    direction = np.asarray(direction, float)
    image = sitk.Image(list(size), sitk.sitkFloat32)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction.ravel().tolist())
    index = np.indices(size[::-1]).reshape(3, -1).T[:, ::-1]  # (x, y, z) index per voxel
    world = np.asarray(origin) + (index * np.asarray(spacing)) @ direction.T
    center = np.asarray(image.TransformContinuousIndexToPhysicalPoint([float(c) for c in center_index]))
    marker = center + (0.0, 12.0, 0.0)
    values = np.full(len(world), -850.0, np.float32)
    values[np.linalg.norm(world - center, axis=1) < radius_mm] = 50.0
    values[np.linalg.norm(world - marker, axis=1) < 2.0] = 1000.0
    array = values.reshape(size[::-1])
    result = sitk.GetImageFromArray(array)
    result.CopyInformation(image)
    return result, center


@pytest.mark.parametrize("name", DIRECTIONS)
def test_patch_at_a_nodule_centroid_has_it_at_its_centre(name):
    image, center = ball_image(DIRECTIONS[name])
    patch = extract_patch(image, center)
    assert patch.shape == (PATCH_SIZE, PATCH_SIZE) and patch.dtype == np.float32
    middle = (PATCH_SIZE - 1) / 2
    near_centre = np.hypot(*np.indices(patch.shape) - middle) < 11  # the marker is 17 pixels away
    rows, columns = np.nonzero((patch > -400) & near_centre)
    assert abs(rows.mean() - middle) < 0.75 and abs(columns.mean() - middle) < 0.75
    # 45 mm over 64 pixels: the 10 mm ball spans about 14 pixels across
    assert 11 <= columns.max() - columns.min() + 1 <= 16
    # rows run along +y: the marker 12 mm towards +y lies 17 pixels below the centre
    marker_rows, marker_columns = np.nonzero(patch > 500)
    assert abs(marker_rows.mean() - (middle + 12 / (FIELD_OF_VIEW_MM / PATCH_SIZE))) < 1.0
    assert abs(marker_columns.mean() - middle) < 1.0


def test_stack_takes_the_slices_through_the_nodule_and_goes_back():
    image, center = ball_image(np.diag([-1.0, 1.0, -1.0]))
    stack = extract_stack(image, center, (center[2] - 4.6, center[2] + 4.6))
    # slices every 1.5 mm within +/- 4.6 mm of the centre slice: 7 of them
    assert stack.patches.shape == (7, PATCH_SIZE, PATCH_SIZE)
    np.testing.assert_allclose(np.diff(stack.centers_lps[:, 2]), 1.5, atol=1e-6)
    np.testing.assert_allclose(stack.slab_mm, 1.5, atol=1e-6)
    back = sitk.GetArrayFromImage(backproject([stack], [stack.patches], image, background=np.nan))
    original = sitk.GetArrayFromImage(image)
    covered = ~np.isnan(back)
    # each covered slice gets the 45 mm square around the point, and the values come back
    assert covered.any(axis=(1, 2)).sum() == 7
    per_slice = covered.sum(axis=(1, 2))
    expected = (FIELD_OF_VIEW_MM / 0.7) * (FIELD_OF_VIEW_MM / 0.8)
    assert np.all(np.abs(per_slice[per_slice > 0] - expected) / expected < 0.08)
    smooth = covered & (np.abs(original - (-850)) < 1)
    assert np.median(np.abs(back[smooth] - original[smooth])) < 1.0


def test_backprojected_ones_cover_exactly_the_patch_square():
    image, center = ball_image(np.eye(3))
    stack = extract_stack(image, center, (center[2], center[2]))
    ones = np.ones_like(stack.patches)
    back = sitk.GetArrayFromImage(backproject([stack], [ones], image))
    assert set(np.unique(back)) == {0.0, 1.0}
    z = int(round(image.TransformPhysicalPointToContinuousIndex(center.tolist())[2]))
    assert back[z].sum() > 0 and back.sum() == back[z].sum()


def test_point_outside_the_image_is_one_clear_sentence():
    image, center = ball_image(np.eye(3))
    with pytest.raises(PatchError, match=r"lies outside the image, whose LPS extent is"):
        extract_patch(image, center + (0.0, 0.0, 500.0))
    with pytest.raises(PatchError):
        extract_stack(image, (1e4, 0.0, 0.0))
