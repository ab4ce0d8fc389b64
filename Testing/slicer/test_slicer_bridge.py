"""The MRML bridge (xaiexplain.slicer), the batch script and the module files, against Slicer's own MRML
classes from the slicer-core wheel; slice-view screenshots offscreen with trame-slicer."""
import os
import py_compile
import re
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

slicer = pytest.importorskip("slicer")
import xaiexplain.slicer as xs  # noqa: E402
from helpers import REPOSITORY  # noqa: E402
from xaiexplain.data import lidc, series  # noqa: E402
from xaiexplain.data.sources.phantom_series import write_phantom_series  # noqa: E402
from xaiexplain.errors import XAIExplainError  # noqa: E402
from xaiexplain.explainers import registry  # noqa: E402

MODULE = REPOSITORY / "XAIExplain"
BATCH = MODULE / "Scripts" / "XAIExplainBatch.py"
ARTIFACTS = Path(os.environ.get("XAIEXPLAIN_TEST_ARTIFACTS", REPOSITORY / "out" / "test-artifacts"))


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """The phantom series of LIDC-IDRI-0078 (four nodules) and its ground truth."""
    written = write_phantom_series(lidc.find_scan_by_key("LIDC-IDRI-0078"), tmp_path_factory.mktemp("phantom"),
                                   seed=2)
    truth = sitk.ReadImage(str(written.truth_folder / "nodules.nrrd"))
    return written, series.read_series(written.series_folder), truth


@pytest.fixture()
def scene():
    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    yield scene
    slicer.mrmlScene = None


def _ct_node(ct, scene, name="CT"):
    node = xs.add_volume_node(ct.image, name, scene)
    node.SetAttribute(xs.SERIES_UID, ct.series_instance_uid)
    return node


@pytest.fixture(scope="module")
def explained(phantom):
    """The phantom explained through the bridge twice (grad-cam and cycle-am, LIDC annotations)."""
    _, ct, _ = phantom
    scene = slicer.vtkMRMLScene()
    volume = _ct_node(ct, scene)
    user_node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT relevance grad-cam")  # the user's own
    first = xs.explain_volume_node(volume, "lidc", ["grad-cam", "cycle-am"], scene=scene)
    counts = (scene.GetNumberOfNodes(), [n.GetID() for n in first.nodes()])
    second = xs.explain_volume_node(volume, "lidc", ["grad-cam", "cycle-am"], scene=scene)
    return scene, volume, user_node, first, second, counts


# -- geometry --------------------------------------------------------------------------------------------

def _oblique_flipped_matrix() -> np.ndarray:
    """An IJK-to-RAS matrix with rotated axes, one of them flipped, and unequal spacing."""
    rotation = sitk.VersorTransform((0.3, -0.5, 0.8), 0.4).GetMatrix()
    directions = np.array(rotation).reshape(3, 3) @ np.diag([1.0, -1.0, 1.0])
    matrix = np.eye(4)
    matrix[:3, :3] = directions * np.array([0.7, 0.8, 2.5])
    matrix[:3, 3] = (-31.5, 102.25, -407.0)
    return matrix


def test_oblique_flipped_volume_to_simpleitk_and_back_is_exact(scene):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "oblique")
    voxels = np.random.default_rng(0).integers(-1024, 3000, (7, 9, 11)).astype(np.int16)  # (k, j, i)
    slicer.util.updateVolumeFromArray(node, voxels)
    node.SetIJKToRASMatrix(xs.vtk_matrix(_oblique_flipped_matrix()))

    image = xs.image_from_volume_node(node)
    assert image.GetPixelID() == sitk.sitkInt16
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), voxels)
    for ijk in [(0, 0, 0), (10, 8, 6), (3, 5, 2)]:
        ras = xs.ijk_to_ras(node) @ np.array([*ijk, 1.0])
        lps = image.TransformIndexToPhysicalPoint(ijk)
        np.testing.assert_allclose(lps, (-ras[0], -ras[1], ras[2]), atol=1e-9)

    back = xs.add_volume_node(image, "back", scene)
    np.testing.assert_allclose(xs.ijk_to_ras(back), xs.ijk_to_ras(node), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(back), voxels)
    # the input node is untouched
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), voxels)


def test_relevance_of_an_oblique_flipped_volume_lands_on_the_nodule(phantom, scene):
    """The phantom resampled onto an oblique, flipped grid: the bridge's relevance volume shares the
    input's grid, and its peak, mapped through the node's IJK-to-RAS, lies on the ground-truth nodule
    and within half a voxel of where the library says the peak is."""
    written, ct, truth = phantom
    truth_array = sitk.GetArrayFromImage(truth)
    nodule = np.argwhere(truth_array == 1).mean(axis=0)  # (k, i, j) of nodule_00's voxels
    center_lps = np.array(truth.TransformContinuousIndexToPhysicalPoint(nodule[::-1].tolist()))
    matrix = _oblique_flipped_matrix()
    matrix[:3, :3] = matrix[:3, :3] / np.array([0.7, 0.8, 2.5]) * np.array([0.8, 0.8, 1.5])
    size = np.array([110, 110, 64])
    lps_directions = np.diag([-1.0, -1.0, 1.0]) @ matrix[:3, :3]
    origin_lps = center_lps - lps_directions @ ((size - 1) / 2)
    grid = sitk.Image([int(s) for s in size], sitk.sitkFloat32)
    grid.SetSpacing((0.8, 0.8, 1.5))
    grid.SetDirection((lps_directions / np.array([0.8, 0.8, 1.5])).flatten().tolist())
    grid.SetOrigin(origin_lps.tolist())
    oblique = sitk.Resample(ct.image, grid, sitk.Transform(), sitk.sitkLinear, -1000.0, sitk.sitkFloat32)
    volume = xs.add_volume_node(oblique, "oblique CT", scene)
    center_ras = [-center_lps[0], -center_lps[1], center_lps[2]]

    result = xs.explain_volume_node(volume, [center_ras], ["cycle-am"], scene=scene)
    relevance = result.relevance["cycle-am"]
    np.testing.assert_allclose(xs.ijk_to_ras(relevance), xs.ijk_to_ras(volume), atol=1e-9)
    values = slicer.util.arrayFromVolume(relevance)
    row = result.output.nodules[0]
    sign = 1.0 if row["decision"] == "malignant" else -1.0
    k, j, i = np.unravel_index(np.argmax(sign * values), values.shape)
    peak_ras = xs.ijk_to_ras(relevance) @ np.array([i, j, k, 1.0])
    peak_lps = (-peak_ras[0], -peak_ras[1], peak_ras[2])
    truth_index = truth.TransformPhysicalPointToIndex(peak_lps)
    on_nodule = ndimage.binary_dilation(truth_array == 1, iterations=2)
    assert on_nodule[truth_index[::-1]], (peak_lps, center_lps)
    # the node's voxels sit where the library's LPS relevance image has them, within half a voxel
    library_image = result.output.relevance["cycle-am"]
    center_voxel = np.rint(np.linalg.solve(xs.ijk_to_ras(volume), [*center_ras, 1.0])[:3]).astype(int)
    for ijk in [(i, j, k), tuple(center_voxel)]:
        ras = xs.ijk_to_ras(relevance) @ np.array([*ijk, 1.0])
        index = library_image.TransformPhysicalPointToContinuousIndex((-ras[0], -ras[1], ras[2]))
        assert np.abs(np.array(index) - ijk).max() < 0.5, (index, ijk)
        assert library_image[[int(v) for v in ijk]] == values[ijk[2], ijk[1], ijk[0]]


# -- nodes -----------------------------------------------------------------------------------------------

def test_explain_volume_node_creates_the_nodes_with_their_display(explained, phantom):
    scene, volume, user_node, first, result, _ = explained
    base = volume.GetName()
    assert set(result.relevance) == {"grad-cam", "cycle-am"}
    for method, node in result.relevance.items():
        assert node.GetName() == f"{base} relevance {method}"
        assert node.GetAttribute(xs.OUTPUT_OF) == volume.GetID()
        display = node.GetDisplayNode()
        colors = display.GetColorNode()
        kind = registry.get(method).map_kind
        assert colors.GetName() == xs.colour_table_name(kind)
        assert not display.GetAutoWindowLevel() and display.GetLevel() == 0 and display.GetWindow() > 0
        table = colors.GetLookupTable()
        count = colors.GetNumberOfColors()
        middle, benign_end, malignant_end = (table.GetTableValue(n) for n in (count // 2, 0, count - 1))
        assert middle[3] == 0  # transparent near zero
        assert benign_end[3] > 0.9 and benign_end[2] > benign_end[0]  # opaque blue for benign evidence
        assert malignant_end[3] > 0.9 and malignant_end[0] > malignant_end[2]  # opaque red for malignant
        np.testing.assert_allclose(xs.ijk_to_ras(node), xs.ijk_to_ras(volume), atol=1e-9)
        segmentation = result.outlines[method].GetSegmentation()
        names = [segmentation.GetNthSegment(n).GetName() for n in range(segmentation.GetNumberOfSegments())]
        assert names == list(kind.labels)  # the segments follow the method's kind
    assert result.outlines["grad-cam"].GetDisplayNode().GetVisibility()
    assert not result.outlines["cycle-am"].GetDisplayNode().GetVisibility()
    assert set(result.counterfactuals) == {"malignant", "benign"}
    assert result.counterfactuals["malignant"].GetName() == f"{base} counterfactual malignant G+(x)"
    table = result.table
    assert table.GetNumberOfRows() == 4
    columns = [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())]
    for column in ("nodule", "R (mm)", "A (mm)", "S (mm)", "p(malignant)", "decision", "threshold",
                   "cycle-am p(G+(x))", "cycle-am p(G-(x))", "LIDC label"):
        assert column in columns
    probability = table.GetTable().GetColumnByName("p(malignant)")
    assert all(0 <= probability.GetValue(r) <= 1 for r in range(4))
    assert result.lidc_points.GetNumberOfControlPoints() == 4
    consensus = result.lidc_consensus.GetSegmentation()
    assert consensus.GetNumberOfSegments() == 4
    assert consensus.GetNthSegment(0).GetName().startswith("nodule_00: malignant")
    # the LIDC points lie on the ground-truth nodules
    _, ct, truth = phantom
    truth_array = sitk.GetArrayFromImage(truth)
    for n in range(4):
        ras = result.lidc_points.GetNthControlPointPosition(n)
        index = truth.TransformPhysicalPointToIndex((-ras[0], -ras[1], ras[2]))
        assert truth_array[index[::-1]] == n + 1


def test_a_second_run_replaces_the_first_and_spares_the_users_nodes(explained):
    scene, volume, user_node, first, second, (count_after_first, first_ids) = explained
    assert scene.GetNumberOfNodes() == count_after_first
    assert all(scene.GetNodeByID(node_id) is None or node_id in [n.GetID() for n in second.nodes()]
               for node_id in first_ids)
    assert len(xs.output_nodes(volume, scene)) == len(second.nodes())
    assert scene.IsNodePresent(user_node) and user_node.GetAttribute(xs.OUTPUT_OF) is None
    assert scene.IsNodePresent(volume)
    colour_tables = [n.GetName() for n in xs.nodes_of_class(scene, "vtkMRMLColorTableNode")
                     if n.GetName().startswith("XAIExplain")]
    assert sorted(colour_tables) == sorted(xs.colour_table_name(registry.get(m).map_kind)
                                           for m in ("grad-cam", "cycle-am"))  # one per kind


def test_show_method_switches_the_overlay(explained):
    scene, volume, _, _, result, _ = explained
    composite = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
    xs.show_method(volume, "cycle-am", scene)
    assert composite.GetBackgroundVolumeID() == volume.GetID()
    assert composite.GetForegroundVolumeID() == result.relevance["cycle-am"].GetID()
    assert result.outlines["cycle-am"].GetDisplayNode().GetVisibility()
    assert not result.outlines["grad-cam"].GetDisplayNode().GetVisibility()
    with pytest.raises(XAIExplainError, match="no lrp explanation"):
        xs.show_method(volume, "lrp", scene)


def _scene_state(scene):
    return [(n.GetID(), n.GetName(), n.GetMTime()) for n in xs.nodes_of_class(scene, "vtkMRMLNode")]


def test_bad_input_raises_one_clear_error_and_leaves_the_scene_unchanged(phantom, scene):
    _, ct, _ = phantom
    volume = _ct_node(ct, scene)
    empty_points = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "no points")
    inside = [list(xs.lps_to_ras(ct.image.TransformIndexToPhysicalPoint((256, 256, 40))))]
    outside = [[5000.0, 0.0, 0.0]]
    empty_volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    before = _scene_state(scene)
    cases = [
        ((None, inside, ["grad-cam"]), "scalar volume node"),
        ((empty_volume, inside, ["grad-cam"]), "no image data"),
        ((volume, empty_points, ["grad-cam"]), "has no points"),
        ((volume, [], ["grad-cam"]), "no nodule location"),
        ((volume, outside, ["grad-cam"]), "outside"),
        ((volume, inside, ["gradcam"]), "unknown method"),
        ((volume, inside, []), "at least one method"),
        ((volume, "lidc-annotations", ["grad-cam"]), "give a point list"),
    ]
    for arguments, message in cases:
        with pytest.raises(XAIExplainError, match=message):
            xs.explain_volume_node(*arguments, scene=scene)
    with pytest.raises(XAIExplainError, match="no model bundle"):
        xs.explain_volume_node(volume, inside, ["grad-cam"], bundle="/nonexistent/bundle", scene=scene)
    with pytest.raises(XAIExplainError, match="no model bundle"):
        xs.explain_volume_node(volume, inside, ["cycle-am"], cycle_am="/nonexistent/generators", scene=scene)
    assert _scene_state(scene) == before


# -- slice view screenshot -----------------------------------------------------------------------------

def _offscreen_axial_view(scene_size=640):
    from trame_slicer.core import SlicerApp
    from trame_slicer.views import DirectViewFactory, ViewLayoutDefinition

    app = SlicerApp()
    app.view_manager.register_factory(DirectViewFactory(do_render_offscreen=True))
    view = app.view_manager.create_view(ViewLayoutDefinition.axial_view())
    view.render_window().SetSize(scene_size, scene_size)
    return app, view


def _screenshot(view) -> np.ndarray:
    """The view's pixels, (rows, columns, RGB), row 0 at the bottom as in the view's XY coordinates."""
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    view.render()
    grabber = vtk.vtkWindowToImageFilter()
    grabber.SetInput(view.render_window())
    grabber.ReadFrontBufferOff()
    grabber.Update()
    image = grabber.GetOutput()
    width, height, _ = image.GetDimensions()
    return vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1)[..., :3].copy()


def _save_png(pixels: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(pixels[::-1])).save(path)


def _truth_labels_at(truth: sitk.Image, ras_points: np.ndarray) -> np.ndarray:
    """The ground-truth label at each RAS point (nearest voxel; 0 outside the image)."""
    lps = ras_points * np.array([-1.0, -1.0, 1.0])
    direction = np.array(truth.GetDirection()).reshape(3, 3)
    index = np.rint(np.linalg.solve(direction, (lps - truth.GetOrigin()).T).T / truth.GetSpacing()).astype(int)
    inside = ((index >= 0) & (index < np.array(truth.GetSize()))).all(axis=1)
    labels = np.zeros(len(lps), np.int64)
    array = sitk.GetArrayViewFromImage(truth)
    labels[inside] = array[index[inside, 2], index[inside, 1], index[inside, 0]]
    return labels


def test_slice_view_screenshot_shows_the_overlay_on_the_nodule(phantom):
    """Axial view through nodule_00, with and without the relevance overlay: the pixels differ inside the
    nodule and nowhere beyond the 45 mm patch around it. The PNGs are kept in out/test-artifacts."""
    _, ct, truth = phantom
    app, view = _offscreen_axial_view()
    scene = app.scene
    volume = _ct_node(ct, scene, "LIDC-IDRI-0078 phantom")
    volume.GetDisplayNode().AutoWindowLevelOff()
    volume.GetDisplayNode().SetWindowLevel(1500, -550)
    result = xs.explain_volume_node(volume, "lidc", ["cycle-am"], scene=scene)
    result.lidc_points.GetDisplayNode().SetVisibility(False)  # the same in both pictures anyway
    row = result.output.nodules[0]
    center_ras = xs.lps_to_ras(row["center_lps"])
    view.fit_view_to_content()
    slice_node = view._logic.GetSliceNode()
    slice_node.SetFieldOfView(110.0, 110.0, slice_node.GetFieldOfView()[2])
    slice_node.JumpSliceByCentering(*center_ras)
    slice_node.JumpSliceByOffsetting(*center_ras)

    with_overlay = _screenshot(view)
    view.set_foreground_volume_id(None)
    result.outlines["cycle-am"].GetDisplayNode().SetVisibility(False)
    without_overlay = _screenshot(view)
    _save_png(with_overlay, ARTIFACTS / "slice_view_overlay.png")
    _save_png(without_overlay, ARTIFACTS / "slice_view_plain.png")

    changed = np.abs(with_overlay.astype(int) - without_overlay.astype(int)).sum(axis=2) > 30
    xy_to_ras = np.array([[slice_node.GetXYToRAS().GetElement(r, c) for c in range(4)] for r in range(4)])
    rows, columns = np.mgrid[:changed.shape[0], :changed.shape[1]]
    pixel_ras = (xy_to_ras @ np.stack([columns.ravel(), rows.ravel(), np.zeros(rows.size),
                                       np.ones(rows.size)]))[:3].T
    nodule = _truth_labels_at(truth, pixel_ras).reshape(changed.shape) == 1
    assert nodule.sum() > 50, "the view does not pass through the nodule"
    assert changed[nodule].mean() > 0.5, changed[nodule].mean()
    in_plane_distance = np.linalg.norm(pixel_ras[:, :2] - np.array(center_ras[:2]), axis=1).reshape(changed.shape)
    far = in_plane_distance > 45.0 / 2 * np.sqrt(2) + 3.0  # beyond the patch's corners
    assert far.sum() > 1000 and not changed[far].any(), int(changed[far].sum())


# -- batch script and scene files ---------------------------------------------------------------------

def _node_summary(scene):
    return sorted((n.GetClassName(), n.GetName()) for n in xs.nodes_of_class(scene, "vtkMRMLStorableNode")
                  if not n.GetHideFromEditors())


# Slicer 5.10's own command-line options (Base/QTCore/qSlicerCoreCommandOptions.cxx, Base/QTGUI/
# qSlicerCommandOptions.cxx) and its launcher's: an argument Slicer takes never reaches the script
SLICER_OPTIONS = {"--help", "-h", "--testing", "--version", "--home", "--", "--disable-python", "--python-script",
                  "--python-code", "-c", "--ignore-slicerrc", "--additional-module-path", "--additional-module-paths",
                  "--modules-to-ignore", "--disable-modules", "--disable-builtin-modules", "--disable-cli-modules",
                  "--disable-builtin-cli-modules", "--disable-loadable-modules", "--disable-builtin-loadable-modules",
                  "--disable-scripted-loadable-modules", "--disable-builtin-scripted-loadable-modules",
                  "--program-path", "--settings-path", "--temporary-path", "--application-information",
                  "--verbose-module-discovery", "--disable-settings", "--keep-temporary-settings",
                  "--disable-message-handlers", "--disable-terminal-outputs", "--disable-tooltips", "--no-splash",
                  "--no-main-window", "--show-python-console", "--show-python-interactor", "--qt-testing",
                  "--exit-after-startup", "--launch"}
CTEST_FILE = MODULE / "Testing" / "Python" / "CMakeLists.txt"


def _ctest_python_test(script_name: str, phantom_root: Path, out: Path) -> tuple[Path, list[str]]:
    """The script and its arguments of a slicer_add_python_test in the module's CTest file, with the
    CMake variables it uses replaced."""
    text = CTEST_FILE.read_text()
    variables = dict(re.findall(r"set\((\w+) (\S+)\)", text))
    variables.update({"CMAKE_CURRENT_SOURCE_DIR": str(CTEST_FILE.parent), "_batch_out": str(out)})
    variables["_phantom_series"] = variables["_phantom_series"].replace("${_batch_out}/phantom", str(phantom_root))

    def expand(word):
        return re.sub(r"\$\{(\w+)\}", lambda m: expand(variables[m[1]]), word)

    for block in re.findall(r"slicer_add_python_test\((.*?)\)", text, re.DOTALL):
        words = block.split()
        script = CTEST_FILE.parent / expand(words[words.index("SCRIPT") + 1])  # relative: to the CMake file
        if script.name == script_name:
            start = words.index("SCRIPT_ARGS") + 1
            ends = [n for n, w in enumerate(words) if w in ("SCRIPT", "SLICER_ARGS") and n > start]
            return script, [expand(w) for w in words[start:min(ends, default=len(words))]]
    raise AssertionError(f"{CTEST_FILE} runs no {script_name}")


def test_the_ctest_batch_test_hands_the_script_its_own_arguments(phantom, tmp_path):
    """Slicer takes --help itself (it prints its own help and exits 0, the script never runs): the CTest
    test's arguments are the script's, name a real script and the series the CTest fixture writes."""
    written, _, _ = phantom
    root = written.series_folder.parents[2]
    script, arguments = _ctest_python_test("XAIExplainBatch.py", root, tmp_path / "out")
    assert script.resolve() == BATCH.resolve() and script.is_file()
    assert not SLICER_OPTIONS & set(arguments) and not any(a.startswith("--launcher") for a in arguments)
    assert Path(arguments[arguments.index("--series") + 1]) == written.series_folder
    fixture, fixture_arguments = _ctest_python_test("XAIExplainWritePhantom.py", root, tmp_path / "out")
    assert fixture.is_file() and fixture_arguments == [str(tmp_path / "out" / "phantom")]
    assert "PASS_REGULAR_EXPRESSION" not in CTEST_FILE.read_text()  # CTest then judges by the exit status


def test_batch_script_writes_a_scene_that_loads_back_with_the_same_nodes(phantom, tmp_path):
    """The batch script with the CTest test's own arguments, under plain Python."""
    written, ct, _ = phantom
    missing = tmp_path / "no-such-series"
    script, arguments = _ctest_python_test("XAIExplainBatch.py", written.series_folder.parents[2], tmp_path)
    result = subprocess.run([sys.executable, str(script), *arguments], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.search(r"scene\.mrml", result.stdout)  # what the CTest test passes by
    [folder] = (tmp_path / "scenes").iterdir()
    files = sorted(p.name for p in folder.iterdir())
    assert "scene.mrml" in files and "nodules.json" in files
    assert "LIDC-IDRI-0078_relevance_grad-cam.nrrd" in files
    relevance = sitk.ReadImage(str(folder / "LIDC-IDRI-0078_relevance_grad-cam.nrrd"))
    assert relevance.GetSize() == ct.image.GetSize()
    np.testing.assert_allclose(relevance.GetOrigin(), ct.image.GetOrigin(), atol=1e-4)

    loaded = xs.load_scene(folder / "scene.mrml")
    names = _node_summary(loaded)
    assert ("vtkMRMLScalarVolumeNode", "LIDC-IDRI-0078 relevance grad-cam") in names
    assert ("vtkMRMLSegmentationNode", "LIDC-IDRI-0078 evidence grad-cam") in names
    assert ("vtkMRMLSegmentationNode", "LIDC-IDRI-0078 LIDC consensus") in names
    assert ("vtkMRMLMarkupsFiducialNode", "LIDC-IDRI-0078 LIDC nodules") in names
    assert ("vtkMRMLTableNode", "LIDC-IDRI-0078 XAIExplain results") in names
    node = loaded.GetFirstNodeByName("LIDC-IDRI-0078 relevance grad-cam")
    assert node.GetImageData() is not None
    assert node.GetDisplayNode().GetColorNode().GetName() == xs.colour_table_name(registry.get("grad-cam").map_kind)
    assert loaded.GetFirstNodeByName("LIDC-IDRI-0078 LIDC nodules").GetNumberOfControlPoints() == 4
    assert loaded.GetFirstNodeByName("LIDC-IDRI-0078 XAIExplain results").GetNumberOfRows() == 4
    assert loaded.GetFirstNodeByName("LIDC-IDRI-0078 evidence grad-cam").GetSegmentation().GetNumberOfSegments() == 2
    # saved again, it is the same scene
    again = xs.load_scene(xs.save_scene(loaded, tmp_path / "again"))
    assert _node_summary(again) == names

    # one good series and one missing: exit 1, one line for the missing one, the good one still written
    command = [sys.executable, str(BATCH), "--series", str(missing),
               str(written.series_folder), "--method", "grad-cam", "--out", str(tmp_path / "mixed")]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"{missing}: {missing} is not a folder"]
    assert len(list((tmp_path / "mixed").iterdir())) == 1


# -- module files --------------------------------------------------------------------------------------

def test_module_files_compile_and_use_only_widgets_of_the_ui_file():
    # Slicer loads every .py at the top of a module folder as a module: only the module itself may be there
    assert sorted(p.name for p in MODULE.glob("*.py")) == ["XAIExplain.py"]
    for script in (MODULE / "XAIExplain.py", BATCH):
        py_compile.compile(str(script), doraise=True)
    ui = ElementTree.parse(MODULE / "Resources" / "UI" / "XAIExplain.ui")
    widgets = {w.get("name") for w in ui.iter("widget")}
    used = set(re.findall(r"self\.ui\.(\w+)", (MODULE / "XAIExplain.py").read_text()))
    assert used and used <= widgets, used - widgets
    parameters = set(re.findall(r"^    (\w+): ", (MODULE / "XAIExplain.py").read_text(), re.MULTILINE))
    bound = {p.find("string").text for p in ui.iter("property") if p.get("name") == "SlicerParameterName"}
    assert bound <= parameters, bound - parameters
    assert (MODULE / "Resources" / "Icons" / "XAIExplain.png").is_file()
    cmake = (REPOSITORY / "CMakeLists.txt").read_text()
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL",
                "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS", "find_package(Slicer", "add_subdirectory(XAIExplain)",
                "Slicer_EXTENSION_GENERATE_CONFIG", "Slicer_EXTENSION_CPACK"):
        assert key in cmake, key
    module_cmake = (MODULE / "CMakeLists.txt").read_text()
    for key in ("slicerMacroBuildScriptedModule", "WITH_GENERIC_TESTS", "slicer_add_python_unittest",
                "Resources/UI/${MODULE_NAME}.ui", "XAIExplainLib"):
        assert key in module_cmake, key


# Issue 16: the batch explains a LIDC-IDRI download tree as `explain --lidc-root` does, one scene per series.
def test_the_batch_explains_a_download_tree(lidc_download_tree, tmp_path):
    from conftest import tree_patients

    result = subprocess.run([sys.executable, str(BATCH), "--lidc-root", str(lidc_download_tree), "--method",
                             "grad-cam", "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    folders = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert {name.split("_")[0] for name in folders} == tree_patients()
    assert all((tmp_path / "out" / name / "scene.mrml").is_file() for name in folders)
    empty = subprocess.run([sys.executable, str(BATCH), "--lidc-root", str(tmp_path / "out"), "--out",
                            str(tmp_path / "again")], capture_output=True, text=True)
    assert empty.returncode == 2 and "holds no CT series that the LIDC readers annotated" in empty.stderr
    assert not (tmp_path / "again").exists()
