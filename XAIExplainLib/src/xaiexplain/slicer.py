"""The bridge between the library and 3D Slicer's MRML scene.

Everything else in the library works in SimpleITK images and LPS millimetres; this module converts MRML
volume nodes to and from SimpleITK images (RAS <-> LPS, any IJK-to-RAS matrix) and puts an explanation
into a scene as nodes a radiologist can look at:

- per method a relevance volume with a diverging colour table (blue: evidence for benign, red: evidence
  for malignant, transparent near zero) and a segmentation with "malignant evidence" and "benign
  evidence" segments; for ``cycle-am`` the two counterfactual volumes G+(x) and G-(x);
- a table with one row per nodule;
- for LIDC series: the annotated nodules as a markups point list and the radiologists' consensus
  contours as a segmentation.

It imports ``slicer`` only when called and uses only what real Slicer and the ``slicer-core`` wheel both
provide, so the tests run it against Slicer's own MRML classes. Every function takes a ``scene``
argument, defaulting to ``slicer.mrmlScene``.

From Slicer's Python console::

    import xaiexplain.slicer as xs
    xs.explain_volume_node(getNode("CT"), getNode("F"), ["grad-cam", "cycle-am"])

Work is split in three so the module panel can keep its GUI responsive: ``prepare`` reads the scene and
checks the request (main thread), ``compute`` runs the models and touches no MRML (any thread),
``show`` writes the nodes (main thread). ``explain_volume_node`` does all three.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import XAIExplainError
from .files import check_output_folder, output_set, safe_name

# Attributes on every node this module creates: whose output it is (the input volume's node ID) and what
# it is. Re-running replaces exactly the nodes carrying the input's ID, never a node of the user's.
OUTPUT_OF = "XAIExplain.OutputOf"
ROLE = "XAIExplain.Role"
SERIES_UID = "DICOM.SeriesInstanceUID"
RELEVANCE_COLORS = "XAIExplain relevance (benign blue, malignant red)"
# |relevance| below this fraction of the window's half width is fully transparent, so the CT shows through
TRANSPARENT_FRACTION = 0.12
MALIGNANT_RGB = (0.9, 0.12, 0.1)
BENIGN_RGB = (0.1, 0.35, 0.95)
_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _slicer():
    import slicer

    return slicer


def scene_or_default(scene=None):
    """``scene``, or ``slicer.mrmlScene`` when it is None."""
    if scene is not None:
        return scene
    scene = getattr(_slicer(), "mrmlScene", None)
    if scene is None:
        raise XAIExplainError("there is no MRML scene: pass scene= or set slicer.mrmlScene")
    return scene


# -- geometry ------------------------------------------------------------------------------------------

def ijk_to_ras(volume_node) -> np.ndarray:
    """The 4 x 4 IJK-to-RAS matrix of a volume node, as numpy."""
    import vtk

    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def _vtk_matrix(array: np.ndarray):
    import vtk

    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def image_from_volume_node(volume_node) -> sitk.Image:
    """A copy of a scalar volume node as a SimpleITK image in LPS, with the node's pixel type and exact
    geometry (spacing, origin, direction from its IJK-to-RAS matrix, oblique and flipped axes included).
    The geometry is the node's own, before any parent transform."""
    slicer = _slicer()
    if volume_node is None or not volume_node.IsA("vtkMRMLScalarVolumeNode"):
        raise XAIExplainError("give a scalar volume node (a CT series loaded in Slicer)")
    if volume_node.GetImageData() is None:
        raise XAIExplainError(f"volume {volume_node.GetName()!r} holds no image data")
    if volume_node.GetImageData().GetNumberOfScalarComponents() != 1:
        raise XAIExplainError(f"volume {volume_node.GetName()!r} has several components per voxel; give a CT volume")
    array = np.array(slicer.util.arrayFromVolume(volume_node), copy=True)  # (k, j, i)
    ijk_to_lps = _LPS_FROM_RAS @ ijk_to_ras(volume_node)
    columns = ijk_to_lps[:3, :3]
    spacing = np.linalg.norm(columns, axis=0)
    direction = columns / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-6):
        raise XAIExplainError(f"volume {volume_node.GetName()!r} has sheared axes; resample it first "
                              "(e.g. harden a gantry-tilt transform)")
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing.tolist())
    image.SetOrigin(ijk_to_lps[:3, 3].tolist())
    image.SetDirection(direction.flatten().tolist())
    return image


def update_volume_node_from_image(volume_node, image: sitk.Image) -> None:
    """Set a volume node's voxels and IJK-to-RAS matrix from a SimpleITK image (LPS)."""
    slicer = _slicer()
    direction = np.array(image.GetDirection()).reshape(3, 3)
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = direction * np.array(image.GetSpacing())
    ijk_to_lps[:3, 3] = image.GetOrigin()
    slicer.util.updateVolumeFromArray(volume_node, sitk.GetArrayFromImage(image))
    volume_node.SetIJKToRASMatrix(_vtk_matrix(_LPS_FROM_RAS @ ijk_to_lps))


def add_volume_node(image: sitk.Image, name: str, scene=None, class_name: str = "vtkMRMLScalarVolumeNode"):
    """A new volume node holding a SimpleITK image (LPS), with default display nodes."""
    scene = scene_or_default(scene)
    node = scene.AddNewNodeByClass(class_name, name)
    update_volume_node_from_image(node, image)
    node.CreateDefaultDisplayNodes()
    return node


def _world_to_volume_lps(volume_node, ras_points: np.ndarray) -> np.ndarray:
    """World RAS points (N, 3) in the LPS frame of the volume's own voxels (its parent transform undone)."""
    slicer = _slicer()
    ras_points = np.atleast_2d(np.asarray(ras_points, float))
    parent = volume_node.GetParentTransformNode()
    if parent is not None:
        if not parent.IsLinear():
            raise XAIExplainError(f"volume {volume_node.GetName()!r} is under a non-linear transform; harden it first")
        import vtk

        world_to_local = vtk.vtkMatrix4x4()
        slicer.vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(None, parent, world_to_local)
        matrix = np.array([[world_to_local.GetElement(r, c) for c in range(4)] for r in range(4)])
        ras_points = (matrix[:3, :3] @ ras_points.T).T + matrix[:3, 3]
    return ras_points * np.array([-1.0, -1.0, 1.0])


def _lps_to_ras(lps) -> list[float]:
    return [-float(lps[0]), -float(lps[1]), float(lps[2])]


# -- the request -----------------------------------------------------------------------------------------

@dataclass
class ExplanationRequest:
    """A checked request, with copies of what it needs from the scene: safe to compute on another thread."""

    volume_id: str
    volume_name: str
    image: sitk.Image  # float32 HU, LPS
    methods: list[str]
    bundle: object  # a loaded classifier Bundle
    cycle_am: object | None  # a loaded cycle-am Bundle, for cycle-am
    points_lps: np.ndarray | None  # (N, 3), or None for the LIDC annotations
    series_instance_uid: str | None
    options: dict = field(default_factory=dict)


@dataclass
class ExplanationOutput:
    """What ``compute`` returns: the library's SeriesExplanation, and for LIDC series the consensus."""

    series: object  # explanation.SeriesExplanation
    consensus: sitk.Image | None = None  # uint16, nodule_index + 1 inside each nodule
    lidc_sites: list = field(default_factory=list)


@dataclass
class VolumeExplanation:
    """The nodes ``show`` created, and the library's result."""

    relevance: dict  # method -> scalar volume node
    evidence: dict  # method -> segmentation node
    counterfactuals: dict  # "malignant" / "benign" -> scalar volume node (cycle-am only)
    table: object
    lidc_points: object | None
    lidc_consensus: object | None
    output: ExplanationOutput

    def nodes(self) -> list:
        return [*self.relevance.values(), *self.evidence.values(), *self.counterfactuals.values(), self.table,
                *(n for n in (self.lidc_points, self.lidc_consensus) if n is not None)]


class Cancelled(XAIExplainError):
    """The user stopped the run; nothing was added to the scene."""


def _series_uid_of(volume_node, scene) -> str | None:
    """The SeriesInstanceUID of a volume: our attribute, else the one Slicer's DICOM module records."""
    uid = volume_node.GetAttribute(SERIES_UID)
    if uid:
        return uid
    slicer = _slicer()
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if hierarchy is not None:
        item = hierarchy.GetItemByDataNode(volume_node)
        uid = hierarchy.GetItemUID(item, "DICOM") if item else ""
        if uid:
            return uid
    return None


def _points_from(points, volume_node) -> np.ndarray:
    """Nodule locations as LPS points in the volume's frame: from a markups node (world RAS) or from a
    sequence of RAS points."""
    if points is not None and hasattr(points, "GetNumberOfControlPoints"):
        count = points.GetNumberOfControlPoints()
        if count == 0:
            raise XAIExplainError(f"point list {points.GetName()!r} has no points: place one on each nodule")
        ras = np.array([points.GetNthControlPointPositionWorld(n) for n in range(count)], float)
    else:
        try:
            ras = np.asarray(points if points is not None else [], float).reshape(-1, 3)
        except (TypeError, ValueError):
            raise XAIExplainError("nodule locations must be RAS points (x, y, z), a markups point list or "
                                  "'lidc'") from None
        if len(ras) == 0:
            raise XAIExplainError("no nodule location given: place a point on each nodule, or use 'lidc'")
    if not np.isfinite(ras).all():
        raise XAIExplainError("a nodule location is not a finite point")
    return _world_to_volume_lps(volume_node, ras)


def prepare(volume_node, points_or_lidc, methods, bundle=None, scene=None, cycle_am=None, device: str = "cpu",
            series_instance_uid: str | None = None, **options) -> ExplanationRequest:
    """Check a request and copy what it needs from the scene. Raises XAIExplainError with one sentence
    for a missing volume, an empty point list, an unknown method or a missing bundle; the scene is left
    as it was."""
    from .bundles import load_bundle
    from .explanation import CYCLE_AM, DEFAULT_CYCLE_AM, ITERATIVE_PREFIX, check_method
    from .patches import check_point_inside

    scene = scene_or_default(scene)
    methods = [methods] if isinstance(methods, str) else list(methods or [])
    if not methods:
        raise XAIExplainError("choose at least one method")
    for method in methods:
        check_method(method)
    image = sitk.Cast(image_from_volume_node(volume_node), sitk.sitkFloat32)
    if isinstance(points_or_lidc, str):
        if points_or_lidc != "lidc":
            raise XAIExplainError(f"nodule locations {points_or_lidc!r}: give a point list, RAS points or 'lidc'")
        points_lps = None
        series_instance_uid = series_instance_uid or _series_uid_of(volume_node, scene)
        if not series_instance_uid:
            raise XAIExplainError(f"volume {volume_node.GetName()!r} has no SeriesInstanceUID to find its LIDC "
                                  "annotations by; load it through the DICOM module or place points instead")
    else:
        points_lps = _points_from(points_or_lidc, volume_node)
        for point in points_lps:
            check_point_inside(image, point)
    classifier = load_bundle(bundle if bundle is not None else "demo-classifier", device=device)
    if classifier.config.get("kind", "classifier") != "classifier":
        raise XAIExplainError(f"{classifier.path} is a {classifier.config.get('kind')} bundle, not a classifier")
    uses_cycle_am = any(m.removeprefix(ITERATIVE_PREFIX) == CYCLE_AM for m in methods)
    generators = load_bundle(cycle_am or DEFAULT_CYCLE_AM, device=device, role="cycle-am") if uses_cycle_am else None
    return ExplanationRequest(volume_id=volume_node.GetID(), volume_name=volume_node.GetName(), image=image,
                              methods=methods, bundle=classifier, cycle_am=generators, points_lps=points_lps,
                              series_instance_uid=series_instance_uid, options=options)


def compute(request: ExplanationRequest, progress=None, should_stop=None) -> ExplanationOutput:
    """Run the request's methods; touches no MRML. ``progress(fraction, message)`` is called as methods
    finish; ``should_stop()`` returning True ends the run with ``Cancelled`` after the current method."""
    from .explanation import explain_series
    from .patch_stacks import consensus_label_image, lidc_sites
    from .series import CTSeries

    def report(fraction, message):
        if progress is not None:
            progress(fraction, message)
        if should_stop is not None and should_stop():
            raise Cancelled("stopped by the user; nothing was added to the scene")

    consensus, sites = None, []
    if request.points_lps is None:
        report(0.0, "finding the LIDC annotations")
        ct = CTSeries(image=request.image, patient_id="", study_instance_uid="",
                      series_instance_uid=request.series_instance_uid, slice_z=np.array([]), files=[],
                      resampled_z=False)
        sites = lidc_sites(ct, with_masks=True)
        if not sites:
            raise XAIExplainError(f"series {request.series_instance_uid} has no annotated nodule")
        consensus = sitk.Resample(consensus_label_image(ct, sites), request.image, sitk.Transform(),
                                  sitk.sitkNearestNeighbor, 0, sitk.sitkUInt16)
        where = sites
    else:
        where = [tuple(p) for p in request.points_lps]
    done = []
    report(0.0, f"explaining with {request.methods[0]}")

    def method_done(method):
        done.append(method)
        following = request.methods[len(done)] if len(done) < len(request.methods) else None
        report(len(done) / len(request.methods), f"explaining with {following}" if following else "done")

    series = explain_series(request.image, where, request.bundle, request.methods, progress=method_done,
                            cycle_am=request.cycle_am, **request.options)
    return ExplanationOutput(series=series, consensus=consensus, lidc_sites=sites)


# -- display ---------------------------------------------------------------------------------------------

def relevance_color_table(scene=None):
    """The diverging colour table of relevance volumes (one per scene, created on first use): blue for
    benign evidence, red for malignant evidence, brighter with magnitude, transparent near zero."""
    scene = scene_or_default(scene)
    for node in _nodes_of_class(scene, "vtkMRMLColorTableNode"):
        if node.GetAttribute(ROLE) == "relevance colours":
            return node
    table = scene.AddNewNodeByClass("vtkMRMLColorTableNode", RELEVANCE_COLORS)
    table.SetAttribute(ROLE, "relevance colours")
    table.SetTypeToUser()
    count = 256
    table.SetNumberOfColors(count)
    table.GetLookupTable().SetTableRange(0, count - 1)
    for n in range(count):
        t = 2.0 * n / (count - 1) - 1.0  # -1 most benign .. +1 most malignant
        strength = abs(t)
        hue = MALIGNANT_RGB if t > 0 else BENIGN_RGB
        # from a saturated colour at moderate strength to a light tint at the extreme, so peaks stand out
        light = max(0.0, strength - 0.6) / 0.4
        rgb = [c + (1.0 - c) * 0.6 * light for c in hue]
        alpha = 0.0 if strength < TRANSPARENT_FRACTION else min(1.0, 0.35 + strength)
        table.SetColor(n, f"{t:+.2f}", *rgb, alpha)
    return table


def _nodes_of_class(scene, class_name: str) -> list:
    collection = scene.GetNodesByClass(class_name)
    nodes = [collection.GetItemAsObject(n) for n in range(collection.GetNumberOfItems())]
    return nodes


def output_nodes(volume_node_or_id, scene=None) -> list:
    """The nodes this module made from a volume (by their attribute), in scene order."""
    scene = scene_or_default(scene)
    volume_id = volume_node_or_id if isinstance(volume_node_or_id, str) else volume_node_or_id.GetID()
    return [node for node in _nodes_of_class(scene, "vtkMRMLNode") if node.GetAttribute(OUTPUT_OF) == volume_id]


def remove_output_nodes(volume_node_or_id, scene=None) -> int:
    """Remove this module's earlier output for a volume, with the nodes' display and storage nodes."""
    scene = scene_or_default(scene)
    nodes = output_nodes(volume_node_or_id, scene)
    for node in nodes:
        helpers = []
        if node.IsA("vtkMRMLDisplayableNode"):
            helpers += [node.GetNthDisplayNode(n) for n in range(node.GetNumberOfDisplayNodes())]
        if node.IsA("vtkMRMLStorableNode"):
            helpers += [node.GetNthStorageNode(n) for n in range(node.GetNumberOfStorageNodes())]
        scene.RemoveNode(node)
        for helper in helpers:
            if helper is not None and scene.IsNodePresent(helper):
                scene.RemoveNode(helper)
    return len(nodes)


def _tag(node, volume_id: str, role: str):
    node.SetAttribute(OUTPUT_OF, volume_id)
    node.SetAttribute(ROLE, role)
    return node


def _ensure_segmentation_converters():
    """Register the labelmap <-> surface converters when nothing has (Slicer's Segmentations module does
    at start-up; a bare slicer-core does not, and without them a segment cannot be created)."""
    slicer = _slicer()
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    if not factory.GetConverterRules():
        factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
        factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())


def add_segmentation_node(label_image: sitk.Image, segments: list[tuple[int, str, tuple]], name: str,
                          reference_volume, scene=None):
    """A segmentation node from a label image: ``segments`` lists (label value, segment name, rgb); every
    listed segment exists, empty where its value does not occur."""
    import vtk

    slicer = _slicer()
    scene = scene_or_default(scene)
    _ensure_segmentation_converters()
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    segmentation.CreateDefaultDisplayNodes()
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume)
    values = sorted(value for value, _, _ in segments)
    # ImportLabelmapToSegmentationNode fills the given segments with label values 1, 2, ... in order
    dense = sitk.GetArrayFromImage(label_image)
    remapped = np.zeros(dense.shape, np.uint16)
    ids = vtk.vtkStringArray()
    for rank, value in enumerate(values, start=1):
        remapped[dense == value] = rank
        _, segment_name, rgb = next(s for s in segments if s[0] == value)
        segment_id = re.sub(r"\W+", "_", segment_name)
        ids.InsertNextValue(segmentation.GetSegmentation().AddEmptySegment(segment_id, segment_name, list(rgb)))
    label_node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "XAIExplain temporary labels")
    try:
        remapped_image = sitk.GetImageFromArray(remapped)
        remapped_image.CopyInformation(label_image)
        update_volume_node_from_image(label_node, remapped_image)
        if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(label_node, segmentation, ids):
            raise XAIExplainError(f"could not build segmentation {name!r}")
    finally:
        scene.RemoveNode(label_node)
    return segmentation


def _table_node(output: ExplanationOutput, name: str, scene):
    """One row per nodule: position (RAS), probability, decision, threshold, and per method the
    iterations of the augmentation or the counterfactuals' probabilities."""
    import vtk

    rows = output.series.nodules
    columns: dict[str, list] = {
        "nodule": [r["name"] for r in rows],
        "R (mm)": [_lps_to_ras(r["center_lps"])[0] for r in rows],
        "A (mm)": [_lps_to_ras(r["center_lps"])[1] for r in rows],
        "S (mm)": [_lps_to_ras(r["center_lps"])[2] for r in rows],
        "slices": [r["slices"] for r in rows],
        "p(malignant)": [r["probability"] for r in rows],
        "decision": [r["decision"] for r in rows],
        "threshold": [r["threshold"] for r in rows],
    }
    if any("lidc" in r for r in rows):
        columns["LIDC label"] = [(r.get("lidc") or {}).get("label") or "not labelled" for r in rows]
        columns["LIDC malignancy (median)"] = [(r.get("lidc") or {}).get("ratings", {}).get("malignancy", np.nan)
                                              for r in rows]
    for method in rows[0]["methods"] if rows else []:
        entries = [r["methods"][method] for r in rows]
        if "iterations" in entries[0]:
            columns[f"{method} iterations"] = [float(np.mean(e["iterations"])) for e in entries]
            columns[f"{method} final p"] = [float(np.mean(e["final_probabilities"])) for e in entries]
        if "counterfactual_malignant_probability" in entries[0]:
            columns[f"{method} p(G+(x))"] = [e["counterfactual_malignant_probability"] for e in entries]
            columns[f"{method} p(G-(x))"] = [e["counterfactual_benign_probability"] for e in entries]
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    for title, values in columns.items():
        array = vtk.vtkStringArray() if isinstance(values[0], str) else vtk.vtkDoubleArray()
        array.SetName(title)
        for value in values:
            array.InsertNextValue(value if isinstance(value, str) else float(value))
        table.AddColumn(array)
    return table


def _show_in_slice_views(scene, background, foreground, opacity: float = 0.8) -> None:
    """Background CT and foreground relevance in every slice view; nothing when there is no view."""
    for composite in _nodes_of_class(scene, "vtkMRMLSliceCompositeNode"):
        composite.SetBackgroundVolumeID(background.GetID())
        composite.SetForegroundVolumeID(foreground.GetID() if foreground is not None else None)
        composite.SetForegroundOpacity(opacity)


def show(request: ExplanationRequest, output: ExplanationOutput, scene=None) -> VolumeExplanation:
    """Put an explanation into the scene, replacing this module's earlier output for the same volume."""
    from .explanation import EVIDENCE_LABELS

    scene = scene_or_default(scene)
    volume = scene.GetNodeByID(request.volume_id)
    if volume is None:
        raise XAIExplainError(f"volume {request.volume_name!r} was removed from the scene while it was explained")
    remove_output_nodes(volume, scene)
    colors = relevance_color_table(scene)
    series, base = output.series, request.volume_name
    relevance, evidence, counterfactual_nodes = {}, {}, {}
    for n, method in enumerate(request.methods):
        node = _tag(add_volume_node(series.relevance[method], f"{base} relevance {method}", scene),
                    request.volume_id, f"relevance {method}")
        node.SetAttribute("XAIExplain.Method", method)
        half_width = _display_half_width(sitk.GetArrayViewFromImage(series.relevance[method]))
        display = node.GetDisplayNode()
        display.SetAndObserveColorNodeID(colors.GetID())
        display.AutoWindowLevelOff()
        display.SetWindowLevel(2.0 * half_width, 0.0)
        display.SetInterpolate(False)
        relevance[method] = node
        segments = [(EVIDENCE_LABELS["malignant evidence"], "malignant evidence", MALIGNANT_RGB),
                    (EVIDENCE_LABELS["benign evidence"], "benign evidence", BENIGN_RGB)]
        segmentation = _tag(add_segmentation_node(series.labels[method], segments, f"{base} evidence {method}",
                                                  volume, scene), request.volume_id, f"evidence {method}")
        segmentation.SetAttribute("XAIExplain.Method", method)
        seg_display = segmentation.GetDisplayNode()
        seg_display.SetOpacity2DFill(0.0)  # outlines only: the relevance volume already colours the inside
        seg_display.SetVisibility(n == 0)  # one method's outlines at a time
        evidence[method] = segmentation
    for kind, image in series.counterfactuals.items():
        sign = "+" if kind == "malignant" else "-"
        node = _tag(add_volume_node(image, f"{base} counterfactual {kind} G{sign}(x)", scene),
                    request.volume_id, f"counterfactual {kind}")
        _copy_window_level(volume, node)
        counterfactual_nodes[kind] = node
    table = _tag(_table_node(output, f"{base} XAIExplain results", scene), request.volume_id, "results")
    lidc_points = lidc_consensus = None
    if output.consensus is not None:
        lidc_points = _tag(_lidc_points_node(output.lidc_sites, f"{base} LIDC nodules", scene),
                           request.volume_id, "LIDC nodules")
        segments = [(site.lidc.nodule_index + 1, _lidc_segment_name(site), _lidc_rgb(site))
                    for site in output.lidc_sites]
        lidc_consensus = _tag(add_segmentation_node(output.consensus, segments, f"{base} LIDC consensus", volume,
                                                    scene), request.volume_id, "LIDC consensus")
        lidc_consensus.GetDisplayNode().SetOpacity2DFill(0.0)
    _show_in_slice_views(scene, volume, relevance[request.methods[0]])
    return VolumeExplanation(relevance=relevance, evidence=evidence, counterfactuals=counterfactual_nodes,
                             table=table, lidc_points=lidc_points, lidc_consensus=lidc_consensus, output=output)


def show_method(volume_node, method: str, scene=None) -> None:
    """Overlay one method's relevance and evidence outlines (of this module's output for a volume) in the
    slice views, hiding the other methods' outlines."""
    scene = scene_or_default(scene)
    relevance = None
    for node in output_nodes(volume_node, scene):
        if node.GetAttribute("XAIExplain.Method") is None:
            continue
        mine = node.GetAttribute("XAIExplain.Method") == method
        if node.IsA("vtkMRMLSegmentationNode"):
            node.GetDisplayNode().SetVisibility(mine)
        elif mine:
            relevance = node
    if relevance is None:
        raise XAIExplainError(f"there is no {method} explanation of {volume_node.GetName()!r} in the scene")
    _show_in_slice_views(scene, volume_node, relevance)


def _display_half_width(values: np.ndarray) -> float:
    """The colour scale's half width: the 99th percentile of |relevance| where there is any, so that the
    few extreme voxels of pixel-level methods (saliency, integrated gradients) do not wash out the rest."""
    magnitude = np.abs(values[values != 0])
    return float(np.percentile(magnitude, 99)) if magnitude.size else 1.0


def _copy_window_level(source, target) -> None:
    source_display, target_display = source.GetDisplayNode(), target.GetDisplayNode()
    if source_display is not None and target_display is not None and source_display.IsA("vtkMRMLScalarVolumeDisplayNode"):
        target_display.AutoWindowLevelOff()
        target_display.SetWindowLevel(source_display.GetWindow(), source_display.GetLevel())


def _lidc_segment_name(site) -> str:
    nodule = site.lidc
    readers = f"{nodule.n_readers} reader" + ("s" if nodule.n_readers > 1 else "")
    return f"{site.name}: {nodule.label or 'not labelled'} ({readers}, median malignancy {nodule.ratings['malignancy']:g})"


def _lidc_rgb(site) -> tuple:
    return {"malignant": MALIGNANT_RGB, "benign": BENIGN_RGB}.get(site.lidc.label, (0.95, 0.85, 0.2))


def _lidc_points_node(sites, name: str, scene):
    points = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
    points.CreateDefaultDisplayNodes()
    for site in sites:
        index = points.AddControlPoint(*_lps_to_ras(site.center_lps), site.name)
        points.SetNthControlPointDescription(index, _lidc_segment_name(site))
        points.SetNthControlPointLocked(index, True)
    return points


def explain_volume_node(volume_node, points_or_lidc, methods=("grad-cam",), bundle=None, scene=None,
                        cycle_am=None, device: str = "cpu", series_instance_uid: str | None = None,
                        progress=None, **options) -> VolumeExplanation:
    """Explain the nodules of a CT volume node and show the result in the scene.

    ``points_or_lidc``: a markups point list, a sequence of RAS points, or ``"lidc"`` (the LIDC
    annotations of the series, found by its SeriesInstanceUID). ``methods``: names from
    ``xaiexplain.available_methods()``. ``bundle``: a classifier bundle name or folder (default the
    shipped demo classifier); ``cycle_am``: the cycle-am bundle. A second call for the same volume
    replaces the first call's nodes. Bad input raises XAIExplainError and leaves the scene unchanged."""
    request = prepare(volume_node, points_or_lidc, methods, bundle, scene, cycle_am, device, series_instance_uid,
                      **options)
    return show(request, compute(request, progress), scene)


# -- files -----------------------------------------------------------------------------------------------

def save_scene(scene, folder, summary: dict | None = None, manifest: str = "nodules.json") -> Path:
    """Write every storable node of the scene beside a ``scene.mrml`` in ``folder``, as one output set with
    ``manifest`` (``summary``, JSON) written last: volumes as NRRD, segmentations as .seg.nrrd, tables as
    TSV, point lists as JSON. The scene refers to its files relative to its own folder, so the folder can be
    moved; an existing folder keeps every file that no earlier scene of this kind wrote."""
    folder = Path(folder).absolute()
    with output_set(folder, manifest) as written:
        used, stored = set(), []
        for node in _nodes_of_class(scene, "vtkMRMLStorableNode"):
            if node.GetHideFromEditors() and not node.IsA("vtkMRMLColorTableNode"):
                continue
            if node.IsA("vtkMRMLColorTableNode") and node.GetType() != node.User:
                continue  # built-in tables are not files
            storage = node.GetStorageNode()
            if storage is None:
                storage = node.CreateDefaultStorageNode()
                if storage is None and node.IsA("vtkMRMLMarkupsNode"):
                    # needs Slicer's markups logic in the application; the storage class itself is in MRML
                    storage = _slicer().vtkMRMLMarkupsJsonStorageNode()
                if storage is None:
                    continue
                scene.AddNode(storage)
                node.SetAndObserveStorageNodeID(storage.GetID())
            stem = safe_name(node.GetName(), fallback=safe_name(node.GetID()))
            while stem in used:
                stem += "_"
            used.add(stem)
            name = f"{stem}.{storage.GetDefaultWriteFileExtension()}"
            storage.SetFileName(str(written.path(name)))
            if not storage.WriteData(node):
                raise XAIExplainError(f"could not write {node.GetName()!r} into {folder}")
            stored.append((storage, name))
        # Commit writes each file name relative to the folder of the scene file it writes: while the files
        # are staged beside it, that is just the name, so the folder can be moved
        scene.SetRootDirectory(str(written.staging))
        if not scene.Commit(str(written.path("scene.mrml"))):
            raise XAIExplainError(f"could not write the scene into {folder}")
        written.manifest_data = summary or {}
    for storage, name in stored:  # the scene in memory now refers to the files where they are
        storage.SetFileName(str(folder / name))
    scene.SetRootDirectory(str(folder))
    scene.SetURL(str(folder / "scene.mrml"))
    return folder / "scene.mrml"


def load_scene(path, scene=None):
    """Read a scene file into ``scene`` (a new vtkMRMLScene by default), its nodes' data included."""
    slicer = _slicer()
    scene = scene if scene is not None else slicer.vtkMRMLScene()
    if scene.GetTagByClassName("vtkMRMLMarkupsJsonStorageNode") is None:
        # Slicer's markups module registers it at start-up; a bare slicer-core scene has not
        scene.RegisterNodeClass(slicer.vtkMRMLMarkupsJsonStorageNode())
    scene.SetURL(str(path))
    if not scene.Connect():
        raise XAIExplainError(f"{path} could not be read as an MRML scene")
    return scene


def series_output_name(patient_id: str, series_instance_uid: str) -> str:
    """The batch's folder name for a series: safe, and unique and deterministic through the full
    SeriesInstanceUID (a UID that is not a plain DICOM UID is replaced by its hash), never run order."""
    uid = series_instance_uid or ""
    if not re.fullmatch(r"[0-9]+(\.[0-9]+)*", uid) or len(uid) > 64:
        uid = "uid-" + hashlib.sha256(uid.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return f"{safe_name(patient_id, fallback='series')}_{uid}"


def explain_series_folder(series_folder, out_root, methods, points_lps=None, bundle=None, cycle_am=None,
                          device: str = "cpu", series_instance_uid: str | None = None, progress=None,
                          allow_gaps: bool = False, written_by_this_run: dict | None = None) -> Path:
    """Read a DICOM series, explain it in a new scene and save that scene with its NRRD files and
    ``nodules.json`` into ``out_root/<patient>_<SeriesInstanceUID>`` (one output set: whole or absent).
    ``points_lps``: nodule locations in LPS mm, as the ``xaiexplain`` command line takes them; None for the
    LIDC annotations. ``written_by_this_run`` (folder name -> series folder) makes a batch refuse a second
    series that would write the same folder. Returns the scene file."""
    from . import __version__
    from .series import read_series

    slicer = _slicer()
    ct = read_series(series_folder, series_instance_uid, allow_gaps=allow_gaps)
    name = series_output_name(ct.patient_id, ct.series_instance_uid)
    if written_by_this_run is not None:
        if name in written_by_this_run:
            raise XAIExplainError(f"it is the same series (PatientID and SeriesInstanceUID) as "
                                  f"{written_by_this_run[name]}, already written to {name}")
        written_by_this_run[name] = str(series_folder)
    out = Path(out_root) / name
    check_output_folder(out, "nodules.json")
    scene = slicer.vtkMRMLScene()
    selection = slicer.vtkMRMLSelectionNode()  # every Slicer scene has one; markups look up units in it
    selection.SetSingletonTag("Singleton")
    scene.AddNode(selection)
    volume = add_volume_node(ct.image, ct.patient_id or "CT", scene)
    volume.SetAttribute(SERIES_UID, ct.series_instance_uid)
    display = volume.GetDisplayNode()
    display.AutoWindowLevelOff()
    display.SetWindowLevel(1500.0, -550.0)  # lung window
    points = "lidc" if points_lps is None else [_lps_to_ras(p) for p in points_lps]
    result = explain_volume_node(volume, points, methods, bundle, scene, cycle_am, device, progress=progress)
    return save_scene(scene, out, {
        "series_folder": str(series_folder), "patient_id": ct.patient_id,
        "series_instance_uid": ct.series_instance_uid, "methods": list(result.relevance),
        "library_version": __version__, "scene": "scene.mrml", "slice_gaps_mm": [list(g) for g in ct.gaps],
        "nodules": result.output.series.nodules})
