"""What the module panel does below its widgets, against Slicer's own MRML classes (slicer-core): Apply's
check and the point-list events it follows, the request the panel writes and the worker it starts, the
results shown under the input's study, names and colours that follow each method's kind, the overlay's
transparency as Slicer's display pipeline draws it, the opacity, and jumping to a nodule."""
import json

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer")
import xaiexplain.slicer as xs  # noqa: E402
from xaiexplain.errors import XAIExplainError  # noqa: E402
from xaiexplain.explainers import registry  # noqa: E402
from xaiexplain.slicer.job import ExplanationJob  # noqa: E402
from xaiexplain.slicer.request import ExplanationOutput, ExplanationRequest  # noqa: E402


@pytest.fixture()
def scene():
    scene = slicer.vtkMRMLScene()
    scene.RegisterNodeClass(slicer.vtkMRMLMarkupsJsonStorageNode())
    selection = slicer.vtkMRMLSelectionNode()  # as in every Slicer scene: markups look up units in it
    selection.SetSingletonTag("Singleton")
    scene.AddNode(selection)
    slicer.mrmlScene = scene
    yield scene
    slicer.mrmlScene = None


def _generated_volume(scene):
    """A 40 x 128 x 128 chest-like volume with one solid 16 mm nodule, inside a patient and study of the
    subject hierarchy as Slicer's DICOM module puts it; the volume node, its study item and the nodule (RAS)."""
    volume = np.full((40, 128, 128), -850.0, np.float32)
    z, y, x = np.ogrid[:40, :128, :128]
    volume[(z - 20) ** 2 / 9 + (y - 64) ** 2 + (x - 64) ** 2 < 64] = 30.0
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "generated CT")
    slicer.util.updateVolumeFromArray(node, volume)
    node.SetSpacing(1.0, 1.0, 2.5)
    node.CreateDefaultDisplayNodes()
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    study = hierarchy.CreateStudyItem(hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "patient"), "study")
    hierarchy.CreateItem(study, node)
    centre = xs.ijk_to_ras(node) @ np.array([64, 64, 20, 1.0])
    return node, study, centre[:3]


def _point_list(scene, tmp_path, points):
    """A point list read from a markups file: (RAS point, position status) pairs. "preview" is the point
    that follows the mouse while the user places one; only a file or the placement widget can make it."""
    lps = [{"id": str(n), "label": f"F-{n}", "position": [-p[0], -p[1], p[2]], "positionStatus": status}
           for n, (p, status) in enumerate(points)]
    path = tmp_path / "points.mrk.json"
    path.write_text(json.dumps({"markups": [{"type": "Fiducial", "coordinateSystem": "LPS", "controlPoints": lps}]}))
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "nodules")
    storage = slicer.vtkMRMLMarkupsJsonStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(node)
    return node


# -- Apply's check -------------------------------------------------------------------------------------------

def test_a_preview_point_does_not_enable_apply_nor_become_a_nodule(scene, tmp_path):
    volume, _, centre = _generated_volume(scene)
    hovering = _point_list(scene, tmp_path, [(centre + 30.0, "preview")])
    assert hovering.GetNumberOfControlPoints() == 1  # what the check used to count
    assert xs.apply_problem(volume, hovering, False, ["grad-cam"]) == \
        "Place a point on each nodule, or use the LIDC annotations."
    placed = _point_list(scene, tmp_path, [(centre, "defined"), (centre + 30.0, "preview")])
    assert xs.apply_problem(volume, placed, False, ["grad-cam"]) is None
    assert xs.apply_problem(volume, None, True, ["grad-cam"]) is None
    assert xs.apply_problem(None, placed, False, ["grad-cam"]) == "Select the CT volume."
    assert xs.apply_problem(volume, placed, False, [""]) == "Choose at least one method."
    request = xs.prepare(volume, placed, ["grad-cam"], scene=scene)
    np.testing.assert_allclose(request.points_lps, [[-centre[0], -centre[1], centre[2]]])
    placed.UnsetNthControlPointPosition(0)
    assert xs.apply_problem(volume, placed, False, ["grad-cam"]) is not None


def test_the_observed_point_list_events_follow_adding_moving_and_removing(scene):
    points = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "nodules")
    fired = []
    for event in xs.POINT_LIST_EVENTS:
        points.AddObserver(getattr(points, event), lambda caller, name: fired.append(name))
    steps = {"add": lambda: points.AddControlPoint(1.0, 2.0, 3.0),
             "move": lambda: points.SetNthControlPointPosition(0, 4.0, 5.0, 6.0),
             "unset": lambda: points.UnsetNthControlPointPosition(0),
             "remove": lambda: points.RemoveNthControlPoint(0)}
    for step, change in steps.items():
        fired.clear()
        change()
        assert fired, f"no observed event when a point is {step}d"


# -- the panel's job, through the worker -----------------------------------------------------------------------

def test_the_panels_job_runs_in_a_worker_and_shows_under_the_study(scene, tmp_path):
    volume, study, centre = _generated_volume(scene)
    points = _point_list(scene, tmp_path, [(centre, "defined"), (centre + 30.0, "preview")])
    request = xs.prepare(volume, points, ["grad-cam"], scene=scene)

    def launch(command, environment):  # XAIExplainLogic.launch
        return slicer.util.launchConsoleProcess(command, useStartupEnvironment=False, updateEnvironment=environment)

    job = ExplanationJob(request, launch, temporary_root=tmp_path / "jobs")
    assert job.wait(timeout=300) == "finished", (job.error, job.log)
    composite = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
    result = xs.show(job.request, job.results(), scene, opacity=0.6)
    job.close()
    assert not job.folder.exists()
    assert result.table.GetNumberOfRows() == 1  # the preview point is no nodule
    np.testing.assert_allclose(xs.ijk_to_ras(result.relevance["grad-cam"]), xs.ijk_to_ras(volume), atol=1e-9)
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    for node in result.nodes():
        assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(node)) == study, node.GetName()
    assert composite.GetForegroundVolumeID() == result.relevance["grad-cam"].GetID()
    assert composite.GetForegroundOpacity() == pytest.approx(0.6)


# -- what is shown, by kind ------------------------------------------------------------------------------------

def _synthetic_output(volume):
    """Maps of three kinds on the volume's grid, and counterfactuals cropped to a box with its own origin
    (as the library may crop them to the nodules)."""
    image = xs.image_from_volume_node(volume)
    size = image.GetSize()

    def on_grid(values):
        out = sitk.GetImageFromArray(values)
        out.CopyInformation(image)
        return out

    ramp = np.linspace(-1, 1, int(np.prod(size)), dtype=np.float32).reshape(size[::-1])
    labels = np.zeros(size[::-1], np.uint8)
    labels[18:22, 60:68, 60:68] = 1
    labels[5:8, 10:14, 10:14] = 2
    crop = sitk.RegionOfInterest(image, (32, 40, 10), (48, 40, 20))
    methods = ["grad-cam", "cycle-am", "saliency"]
    output = ExplanationOutput(relevance={m: on_grid(ramp) for m in methods},
                               labels={m: on_grid(labels) for m in methods},
                               counterfactuals={"malignant": crop, "benign": crop + 10.0},
                               nodules=[{"name": "nodule_00", "center_lps": [-1.0, 2.0, -30.0], "slices": 5,
                                         "probability": 0.7, "decision": "malignant", "threshold": 0.5,
                                         "methods": {m: {} for m in methods}}])
    request = ExplanationRequest(volume.GetID(), volume.GetName(), image, methods, None, None)
    return request, output, crop


def test_names_colours_and_segments_follow_each_methods_kind(scene):
    volume, study, _ = _generated_volume(scene)
    request, output, crop = _synthetic_output(volume)
    result = xs.show(request, output, scene)
    expected = {"grad-cam": ("evidence", "XAIExplain evidence: red malignant evidence, blue benign evidence"),
                "cycle-am": ("change", "XAIExplain change: red brighter in the malignant version, blue darker in "
                                       "the malignant version"),
                "saliency": ("sensitivity", "XAIExplain sensitivity: green relevant to the decision")}
    for method, (kind_name, table_name) in expected.items():
        kind = registry.get(method).map_kind
        assert kind.name == kind_name
        assert result.outlines[method].GetName() == f"generated CT {kind_name} {method}"
        assert result.relevance[method].GetDisplayNode().GetColorNode().GetName() == table_name
        segmentation = result.outlines[method].GetSegmentation()
        segments = [segmentation.GetNthSegment(n) for n in range(segmentation.GetNumberOfSegments())]
        assert [s.GetName() for s in segments] == list(kind.labels)
        for segment, (_, _, sign) in zip(segments, kind.sides):
            red, _, blue = segment.GetColor()
            if kind.colour_map == "diverging":
                assert (red > blue) == (sign > 0)  # red: the positive side (malignant; brighter in G+)
    # the counterfactuals keep their own geometry, not the CT's
    for side, node in result.counterfactuals.items():
        assert node.GetImageData().GetDimensions() == crop.GetSize()
        lps_origin = xs.ijk_to_ras(node)[:3, 3] * np.array([-1, -1, 1])
        np.testing.assert_allclose(lps_origin, crop.GetOrigin(), atol=1e-9)
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    assert {hierarchy.GetItemParent(hierarchy.GetItemByDataNode(n)) for n in result.nodes()} == {study}


def _displayed_alpha(volume_node) -> np.ndarray:
    """The alpha channel Slicer's scalar volume display pipeline makes of a volume (0..255)."""
    from vtk.util.numpy_support import vtk_to_numpy

    display = volume_node.GetDisplayNode()
    display.SetInputImageDataConnection(volume_node.GetImageDataConnection())
    display.UpdateImageDataPipeline()
    producer = display.GetOutputImageDataConnection().GetProducer()
    producer.Update()
    return vtk_to_numpy(producer.GetOutputDataObject(0).GetPointData().GetScalars())[:, 3]


def test_the_overlay_is_drawn_as_transparent_as_its_colour_table_says(scene):
    """Slicer's display ANDs the colour table's alpha with its threshold, so any alpha above 0 is drawn
    opaque: a table's alpha ramp would promise what the view never shows."""
    for method in ("grad-cam", "saliency"):
        kind = registry.get(method).map_kind
        table = xs.relevance_color_table(kind, scene)
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", f"ramp {method}")
        count = table.GetNumberOfColors()
        slicer.util.updateVolumeFromArray(node, np.arange(count, dtype=np.float32).reshape(1, 1, count))
        node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
        display.SetAndObserveColorNodeID(table.GetID())
        display.AutoWindowLevelOff()
        display.SetWindowLevel(count - 1, (count - 1) / 2)  # voxel value n -> table entry n
        promised = np.array([table.GetLookupTable().GetTableValue(n)[3] for n in range(count)])
        np.testing.assert_array_equal(_displayed_alpha(node), np.round(255 * promised))
        assert promised.min() == 0 and promised.max() == 1  # transparent near zero, opaque elsewhere


# -- the slice views -----------------------------------------------------------------------------------------

def test_opacity_and_jumping_to_a_nodule(scene):
    volume, _, _ = _generated_volume(scene)
    request, output, _ = _synthetic_output(volume)
    views = [scene.AddNewNodeByClass("vtkMRMLSliceNode") for _ in range(3)]
    composites = [scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode") for _ in range(3)]
    result = xs.show(request, output, scene)
    xs.set_overlay_opacity(0.25, scene)
    assert [c.GetForegroundOpacity() for c in composites] == [0.25] * 3
    with pytest.raises(XAIExplainError, match="between 0 and 1"):
        xs.set_overlay_opacity(1.5, scene)
    ras = xs.jump_to_nodule(result.table, 0, scene)
    assert ras == pytest.approx((1.0, -2.0, -30.0))
    for view in views:
        matrix = view.GetSliceToRAS()
        assert [matrix.GetElement(r, 3) for r in range(3)] == pytest.approx(ras)
    with pytest.raises(XAIExplainError, match="no row 1"):
        xs.jump_to_nodule(result.table, 1, scene)


def test_the_request_for_lidc_carries_the_series_uid_slicers_dicom_module_recorded(scene, tmp_path):
    """A series loaded through Slicer's DICOM module has its SeriesInstanceUID on its subject-hierarchy
    item; the request the panel writes for "lidc" carries it to the worker."""
    volume, _, _ = _generated_volume(scene)
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    uid = "1.3.6.1.4.1.14519.5.2.1.6279.6001.303494235102183795724852353824"
    hierarchy.SetItemUID(hierarchy.GetItemByDataNode(volume), "DICOM", uid)
    request = xs.prepare(volume, "lidc", ["grad-cam"], scene=scene)
    assert request.points_lps is None and request.series_instance_uid == uid
    xs.write_request(tmp_path, request)
    written = json.loads((tmp_path / "request" / "request.json").read_text())
    assert written["series_instance_uid"] == uid and written["points_lps"] is None
    assert xs.read_request(tmp_path).series_instance_uid == uid


def test_a_results_row_maps_to_its_nodule_through_the_views_model(scene):
    """qMRMLTableModel.mrmlTableRowIndex is not exposed to Python: the panel maps the proxy index to the
    source model's row and this function maps that row to the table's, which the module's table makes the
    same by using the column titles as the header (a table node's default puts them in the first row)."""
    volume, _, _ = _generated_volume(scene)
    request, output, _ = _synthetic_output(volume)
    output.nodules.append({**output.nodules[0], "name": "nodule_01", "center_lps": [5.0, 5.0, -40.0]})
    table = xs.show(request, output, scene).table
    assert table.GetUseColumnTitleAsColumnHeader() and table.GetColumnTitle("R (mm)") == "R (mm)"
    assert [xs.table_row_of_view_row(table, row) for row in range(3)] == [0, 1, None]
    assert xs.jump_to_nodule(table, xs.table_row_of_view_row(table, 1), scene) == pytest.approx((-5.0, -5.0, -40.0))
    plain = scene.AddNewNodeByClass("vtkMRMLTableNode")  # titles in the model's first row
    plain.GetTable().DeepCopy(table.GetTable())
    assert not plain.GetUseColumnTitleAsColumnHeader()
    assert [xs.table_row_of_view_row(plain, row) for row in range(4)] == [None, 0, 1, None]


def test_the_opacity_slider_changes_only_the_views_that_show_the_modules_overlay(scene):
    volume, _, _ = _generated_volume(scene)
    request, output, _ = _synthetic_output(volume)
    ours = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
    result = xs.show(request, output, scene)
    users = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")  # a view the user set up with own layers
    other = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "user's PET")
    users.SetBackgroundVolumeID(volume.GetID())
    users.SetForegroundVolumeID(other.GetID())
    users.SetForegroundOpacity(0.3)
    empty = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
    empty.SetForegroundOpacity(0.4)
    xs.set_overlay_opacity(0.9, scene)
    assert ours.GetForegroundVolumeID() == result.relevance["grad-cam"].GetID()
    assert ours.GetForegroundOpacity() == pytest.approx(0.9)
    assert users.GetForegroundOpacity() == pytest.approx(0.3) and empty.GetForegroundOpacity() == pytest.approx(0.4)


def test_the_ct_selector_hides_the_modules_own_volumes(scene):
    volume, _, _ = _generated_volume(scene)
    request, output, _ = _synthetic_output(volume)
    labels = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    result = xs.show(request, output, scene)
    hidden = set(xs.not_inputs(scene))
    assert hidden == {n.GetID() for n in [*result.relevance.values(), *result.counterfactuals.values()]}
    assert volume.GetID() not in hidden and labels.GetID() not in hidden  # label maps: not of the selector's type
