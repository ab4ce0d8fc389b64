"""The three orthogonal views of a 3D explanation (`make demo`'s 3D figure): the axial, coronal and sagittal
planes through a world point, on world axes whatever the series' spacing and direction."""
import numpy as np
import pytest
import SimpleITK as sitk

from xaiexplain.io.figures import VIEW_PIXEL_MM, orthogonal_views, world_box


def series_with_a_bright_blob(spacing, direction):
    image = sitk.Image([48, 40, 24], sitk.sitkFloat32) - 800.0
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    image.SetOrigin((-20.0, 10.0, -30.0))
    centre_index = (30, 12, 15)
    array = sitk.GetArrayFromImage(image)
    array[centre_index[2] - 1:centre_index[2] + 2, centre_index[1] - 2:centre_index[1] + 3,
          centre_index[0] - 2:centre_index[0] + 3] = 200.0
    blob = sitk.GetImageFromArray(array)
    blob.CopyInformation(image)
    return blob, np.asarray(image.TransformIndexToPhysicalPoint(centre_index))


@pytest.mark.parametrize("spacing, direction", [
    ((0.7, 0.7, 2.5), (1, 0, 0, 0, 1, 0, 0, 0, 1)),
    ((0.9, 0.8, 1.25), tuple(np.asarray(sitk.Euler3DTransform((0, 0, 0), 0.2, 0.0, 0.3).GetMatrix()))),
], ids=["anisotropic", "oblique"])
def test_the_world_box_puts_the_point_at_the_middle_of_every_plane(spacing, direction):
    image, point = series_with_a_bright_blob(spacing, direction)
    box = world_box(image, point, half_width_mm=10.0)
    middle = box.shape[0] // 2
    assert box[middle, middle, middle] == pytest.approx(200.0, abs=1.0)
    # the blob is bright about the middle along every world axis and the background far from it
    bright = np.argwhere(np.nan_to_num(box, nan=-1000) > 0)
    assert np.all(np.abs(bright.mean(0) - middle) * VIEW_PIXEL_MM < 1.5)
    assert np.nanmin(box) == pytest.approx(-800.0, abs=1.0)


def test_the_views_figure_is_written_for_each_method(tmp_path):
    image, point = series_with_a_bright_blob((0.7, 0.7, 2.5), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    relevance = sitk.Cast(image > 0, sitk.sitkFloat32)
    path = orthogonal_views(image, {"saliency": relevance, "integrated-gradients": relevance - 0.5}, point,
                            tmp_path / "views.png", "test")
    assert path.stat().st_size > 10000
