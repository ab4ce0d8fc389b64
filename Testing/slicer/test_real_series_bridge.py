"""The real LIDC-IDRI-0001 series through the Slicer bridge (``xaiexplain.slicer``) against Slicer's own MRML
classes: its readers' consensus, the relevance on its grid, the cropped counterfactual volumes, and the
batch's saved scene."""
import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
import xaiexplain.slicer as xs  # noqa: E402
from conftest import REAL_SERIES_UID  # noqa: E402
from xaiexplain.data import series  # noqa: E402


@pytest.fixture(scope="module")
def real(real_series_folder):
    return series.read_series(real_series_folder)


@pytest.fixture(scope="module")
def explained(real):
    scene = slicer.vtkMRMLScene()
    volume = xs.add_volume_node(real.image, "LIDC-IDRI-0001", scene)
    volume.SetAttribute(xs.SERIES_UID, real.series_instance_uid)
    return scene, volume, xs.explain_volume_node(volume, "lidc", ["integrated-gradients", "cycle-am"], scene=scene)


def _voxel(node, ras):
    return tuple(np.rint(np.linalg.solve(xs.ijk_to_ras(node), [*ras, 1.0])[:3]).astype(int))


def test_the_readers_nodule_and_the_evidence_on_the_real_grid(explained):
    scene, volume, result = explained
    assert volume.GetAttribute(xs.SERIES_UID) == REAL_SERIES_UID
    consensus = result.lidc_consensus.GetSegmentation()
    assert consensus.GetNumberOfSegments() == 1
    assert consensus.GetNthSegment(0).GetName().startswith("nodule_00: malignant")
    assert result.lidc_points.GetNumberOfControlPoints() == 1
    table = result.table.GetTable()
    assert table.GetNumberOfRows() == 1 and table.GetColumnByName("decision").GetValue(0) == "malignant"
    relevance = result.relevance["integrated-gradients"]
    np.testing.assert_allclose(xs.ijk_to_ras(relevance), xs.ijk_to_ras(volume), atol=1e-9)
    # the readers' consensus, put on the series' grid, holds the nodule point and the evidence's peak
    labels = result.output.consensus
    point = result.lidc_points.GetNthControlPointPosition(0)
    i, j, k = _voxel(volume, point)
    assert labels[int(i), int(j), int(k)] == 1
    values = slicer.util.arrayFromVolume(relevance)
    k, j, i = np.unravel_index(np.argmax(values), values.shape)
    assert labels[int(i), int(j), int(k)] == 1
    z = [volume.GetOrigin()[2] + n * volume.GetSpacing()[2] for n in range(volume.GetImageData().GetDimensions()[2])]
    assert -125.5 < z[k] < -107.0  # a slice of the readers' contours


def test_the_counterfactual_volumes_cover_the_nodules_patches_only(explained):
    scene, volume, result = explained
    ct = slicer.util.arrayFromVolume(volume)
    for kind in ("malignant", "benign"):
        node = result.counterfactuals[kind]
        matrix, reference = xs.ijk_to_ras(node), xs.ijk_to_ras(volume)
        np.testing.assert_allclose(matrix[:3, :3], reference[:3, :3], atol=1e-9)  # the series' spacing, axes
        start = np.linalg.solve(reference, matrix[:, 3])[:3]
        np.testing.assert_allclose(start, np.round(start), atol=1e-4)  # on the series' grid
        start = np.round(start).astype(int)
        values = slicer.util.arrayFromVolume(node)
        assert values.size < 0.01 * ct.size
        crop = ct[start[2]:start[2] + values.shape[0], start[1]:start[1] + values.shape[1],
                  start[0]:start[0] + values.shape[2]]
        assert crop.shape == values.shape and np.any(values != crop)


def test_the_batch_saves_the_real_series_scene(real_series_folder, tmp_path):
    scene_file = xs.explain_series_folder(real_series_folder, tmp_path, ["grad-cam"])
    assert scene_file.parent.name == xs.series_output_name("LIDC-IDRI-0001", REAL_SERIES_UID)
    loaded = xs.load_scene(scene_file)
    names = {n.GetName() for n in xs.nodes_of_class(loaded, "vtkMRMLNode")}
    assert {"LIDC-IDRI-0001", "LIDC-IDRI-0001 relevance grad-cam", "LIDC-IDRI-0001 LIDC consensus"} <= names
