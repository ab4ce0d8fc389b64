"""An explanation shown in the scene: relevance volumes with the diverging colour table, evidence
segmentations, counterfactual volumes, the results table, the LIDC points and consensus."""
from __future__ import annotations

import re

import numpy as np
import SimpleITK as sitk

from xaiexplain.errors import XAIExplainError
from xaiexplain.slicer.conversion import (
    BENIGN_RGB,
    MALIGNANT_RGB,
    OUTPUT_OF,
    RELEVANCE_COLORS,
    ROLE,
    TRANSPARENT_FRACTION,
    add_volume_node,
    lps_to_ras,
    scene_or_default,
    slicer_module,
    update_volume_node_from_image,
)
from xaiexplain.slicer.request import ExplanationOutput, ExplanationRequest, VolumeExplanation, compute, prepare

RELEVANT_RGB = (0.15, 0.75, 0.3)
# segment colours by label name (the registry's kinds name the labels)
LABEL_RGB = {"malignant evidence": MALIGNANT_RGB, "benign evidence": BENIGN_RGB, "relevant to the decision": RELEVANT_RGB,
             "brighter in the malignant version": MALIGNANT_RGB, "darker in the malignant version": BENIGN_RGB}
SEQUENTIAL_COLORS = "XAIExplain relevance to the decision (green)"


def relevance_color_table(scene=None, colour_map: str = "diverging"):
    """The colour table of relevance volumes of a kind's ``colour_map`` (one per scene, created on first
    use). "diverging": blue below zero, red above, brighter with magnitude; "sequential" (unsigned
    sensitivities): green, brighter with magnitude. Transparent near zero."""
    scene = scene_or_default(scene)
    role = f"relevance colours ({colour_map})"
    for node in nodes_of_class(scene, "vtkMRMLColorTableNode"):
        if node.GetAttribute(ROLE) == role:
            return node
    table = scene.AddNewNodeByClass("vtkMRMLColorTableNode",
                                    RELEVANCE_COLORS if colour_map == "diverging" else SEQUENTIAL_COLORS)
    table.SetAttribute(ROLE, role)
    table.SetTypeToUser()
    count = 256
    table.SetNumberOfColors(count)
    table.GetLookupTable().SetTableRange(0, count - 1)
    for n in range(count):
        if colour_map == "diverging":
            t = 2.0 * n / (count - 1) - 1.0  # -1 most benign .. +1 most malignant
        else:
            t = n / (count - 1)
        strength = abs(t)
        hue = RELEVANT_RGB if colour_map != "diverging" else MALIGNANT_RGB if t > 0 else BENIGN_RGB
        # from a saturated colour at moderate strength to a light tint at the extreme, so peaks stand out
        light = max(0.0, strength - 0.6) / 0.4
        rgb = [c + (1.0 - c) * 0.6 * light for c in hue]
        alpha = 0.0 if strength < TRANSPARENT_FRACTION else min(1.0, 0.35 + strength)
        table.SetColor(n, f"{t:+.2f}", *rgb, alpha)
    return table


def nodes_of_class(scene, class_name: str) -> list:
    collection = scene.GetNodesByClass(class_name)
    nodes = [collection.GetItemAsObject(n) for n in range(collection.GetNumberOfItems())]
    return nodes


def output_nodes(volume_node_or_id, scene=None) -> list:
    """The nodes this module made from a volume (by their attribute), in scene order."""
    scene = scene_or_default(scene)
    volume_id = volume_node_or_id if isinstance(volume_node_or_id, str) else volume_node_or_id.GetID()
    return [node for node in nodes_of_class(scene, "vtkMRMLNode") if node.GetAttribute(OUTPUT_OF) == volume_id]


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
    slicer = slicer_module()
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    if not factory.GetConverterRules():
        factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
        factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())


def add_segmentation_node(label_image: sitk.Image, segments: list[tuple[int, str, tuple]], name: str,
                          reference_volume, scene=None):
    """A segmentation node from a label image: ``segments`` lists (label value, segment name, rgb); every
    listed segment exists, empty where its value does not occur."""
    import vtk

    slicer = slicer_module()
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
        "R (mm)": [lps_to_ras(r["center_lps"])[0] for r in rows],
        "A (mm)": [lps_to_ras(r["center_lps"])[1] for r in rows],
        "S (mm)": [lps_to_ras(r["center_lps"])[2] for r in rows],
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
    for composite in nodes_of_class(scene, "vtkMRMLSliceCompositeNode"):
        composite.SetBackgroundVolumeID(background.GetID())
        composite.SetForegroundVolumeID(foreground.GetID() if foreground is not None else None)
        composite.SetForegroundOpacity(opacity)


def show(request: ExplanationRequest, output: ExplanationOutput, scene=None) -> VolumeExplanation:
    """Put an explanation into the scene, replacing this module's earlier output for the same volume."""
    from xaiexplain.explainers import registry

    scene = scene_or_default(scene)
    volume = scene.GetNodeByID(request.volume_id)
    if volume is None:
        raise XAIExplainError(f"volume {request.volume_name!r} was removed from the scene while it was explained")
    remove_output_nodes(volume, scene)
    series, base = output.series, request.volume_name
    relevance, evidence, counterfactual_nodes = {}, {}, {}
    for n, method in enumerate(request.methods):
        node = _tag(add_volume_node(series.relevance[method], f"{base} relevance {method}", scene),
                    request.volume_id, f"relevance {method}")
        node.SetAttribute("XAIExplain.Method", method)
        half_width = _display_half_width(sitk.GetArrayViewFromImage(series.relevance[method]))
        kind = registry.get(method).map_kind
        display = node.GetDisplayNode()
        display.SetAndObserveColorNodeID(relevance_color_table(scene, kind.colour_map).GetID())
        display.AutoWindowLevelOff()
        if kind.colour_map == "diverging":
            display.SetWindowLevel(2.0 * half_width, 0.0)
        else:  # unsigned: 0 .. half width
            display.SetWindowLevel(half_width, half_width / 2.0)
        display.SetInterpolate(False)
        relevance[method] = node
        segments = [(value, name, LABEL_RGB[name]) for name, value in kind.labels.items()]
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
        index = points.AddControlPoint(*lps_to_ras(site.center_lps), site.name)
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
