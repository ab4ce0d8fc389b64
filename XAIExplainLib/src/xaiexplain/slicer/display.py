"""An explanation shown in the scene: relevance volumes with their kind's colour table, the kind's
segmentations (outlines), counterfactual volumes, the results table, the LIDC points and consensus, all
under the input volume's study in the subject hierarchy. Names and colours follow each method's kind
(``explainers.kinds.Kind``): what a node is called says what its map means."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from xaiexplain.errors import XAIExplainError
from xaiexplain.slicer.colours import NEGATIVE_RGB, POSITIVE_RGB, relevance_color_table, side_rgb
from xaiexplain.slicer.conversion import (
    OUTPUT_OF,
    ROLE,
    add_volume_node,
    lps_to_ras,
    nodes_of_class,
    scene_or_default,
    slicer_module,
)
from xaiexplain.slicer.request import ExplanationOutput, ExplanationRequest, VolumeExplanation, compute, prepare
from xaiexplain.slicer.segmentations import add_segmentation_node
from xaiexplain.slicer.views import DEFAULT_OPACITY, show_in_slice_views

METHOD = "XAIExplain.Method"
UNLABELLED_RGB = (0.95, 0.85, 0.2)


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


def _table_node(output: ExplanationOutput, name: str, scene):
    """One row per nodule: position (RAS), probability, decision, threshold, and per method the
    iterations of the augmentation or the counterfactuals' probabilities."""
    import vtk

    rows = output.nodules
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
    table.SetUseColumnTitleAsColumnHeader(True)  # the titles are the header: the view's first row is a nodule
    for title, values in columns.items():
        array = vtk.vtkStringArray() if isinstance(values[0], str) else vtk.vtkDoubleArray()
        array.SetName(title)
        for value in values:
            array.InsertNextValue(value if isinstance(value, str) else float(value))
        table.AddColumn(array)
        table.SetColumnTitle(title, title)  # the header the view shows
    return table


def _place_beside(volume, nodes, scene) -> None:
    """Put the nodes under the volume's parent in the subject hierarchy (its study, for DICOM)."""
    hierarchy = slicer_module().vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    volume_item = hierarchy.GetItemByDataNode(volume)
    parent = hierarchy.GetItemParent(volume_item) if volume_item else hierarchy.GetSceneItemID()
    for node in nodes:
        item = hierarchy.GetItemByDataNode(node) or hierarchy.CreateItem(parent, node)
        hierarchy.SetItemParent(item, parent)


def _relevance_node(image: sitk.Image, method: str, kind, request: ExplanationRequest, scene):
    node = _tag(add_volume_node(image, f"{request.volume_name} relevance {method}", scene), request.volume_id,
                f"relevance {method}")
    node.SetAttribute(METHOD, method)
    half_width = _display_half_width(sitk.GetArrayViewFromImage(image))
    display = node.GetDisplayNode()
    display.SetAndObserveColorNodeID(relevance_color_table(kind, scene).GetID())
    display.AutoWindowLevelOff()
    if kind.colour_map == "diverging":
        display.SetWindowLevel(2.0 * half_width, 0.0)
    else:  # unsigned: 0 .. half width
        display.SetWindowLevel(half_width, half_width / 2.0)
    display.SetInterpolate(False)
    return node


def _outline_node(labels: sitk.Image, method: str, kind, request: ExplanationRequest, volume, scene):
    segments = [(value, label, side_rgb(kind, sign)) for label, value, sign in kind.sides]
    segmentation = _tag(add_segmentation_node(labels, segments, f"{request.volume_name} {kind.name} {method}",
                                              volume, scene), request.volume_id, f"{kind.name} {method}")
    segmentation.SetAttribute(METHOD, method)
    segmentation.GetDisplayNode().SetOpacity2DFill(0.0)  # outlines only: the relevance volume colours the inside
    return segmentation


def show(request: ExplanationRequest, output: ExplanationOutput, scene=None,
         opacity: float = DEFAULT_OPACITY) -> VolumeExplanation:
    """Put an explanation into the scene, replacing this module's earlier output for the same volume, under
    the volume's study; the first method is overlaid in the slice views with ``opacity``."""
    from xaiexplain.slicer.methods import map_kind  # not the registry: no torch in Slicer's process

    scene = scene_or_default(scene)
    volume = scene.GetNodeByID(request.volume_id)
    if volume is None:
        raise XAIExplainError(f"volume {request.volume_name!r} was removed from the scene while it was explained")
    remove_output_nodes(volume, scene)
    base = request.volume_name
    relevance, outlines, counterfactual_nodes = {}, {}, {}
    for n, method in enumerate(request.methods):
        kind = map_kind(method)
        relevance[method] = _relevance_node(output.relevance[method], method, kind, request, scene)
        outlines[method] = _outline_node(output.labels[method], method, kind, request, volume, scene)
        outlines[method].GetDisplayNode().SetVisibility(n == 0)  # one method's outlines at a time
    for side, image in output.counterfactuals.items():  # each volume by its own geometry
        sign = "+" if side == "malignant" else "-"
        node = _tag(add_volume_node(image, f"{base} counterfactual {side} G{sign}(x)", scene),
                    request.volume_id, f"counterfactual {side}")
        _copy_window_level(volume, node)
        counterfactual_nodes[side] = node
    table = _tag(_table_node(output, f"{base} XAIExplain results", scene), request.volume_id, "results")
    lidc_points = lidc_consensus = None
    if output.consensus is not None:
        lidc_points = _tag(_lidc_points_node(output.lidc_nodules, f"{base} LIDC nodules", scene),
                           request.volume_id, "LIDC nodules")
        segments = [(nodule["nodule_index"] + 1, _lidc_segment_name(nodule), _lidc_rgb(nodule))
                    for nodule in output.lidc_nodules]
        lidc_consensus = _tag(add_segmentation_node(output.consensus, segments, f"{base} LIDC consensus", volume,
                                                    scene), request.volume_id, "LIDC consensus")
        lidc_consensus.GetDisplayNode().SetOpacity2DFill(0.0)
    result = VolumeExplanation(relevance=relevance, outlines=outlines, counterfactuals=counterfactual_nodes,
                               table=table, lidc_points=lidc_points, lidc_consensus=lidc_consensus, output=output)
    _place_beside(volume, result.nodes(), scene)
    show_in_slice_views(scene, volume, relevance[request.methods[0]], opacity)
    return result


def show_method(volume_node, method: str, scene=None) -> None:
    """Overlay one method's relevance and outlines (of this module's output for a volume) in the slice
    views, hiding the other methods' outlines."""
    scene = scene_or_default(scene)
    relevance = None
    for node in output_nodes(volume_node, scene):
        if node.GetAttribute(METHOD) is None:
            continue
        mine = node.GetAttribute(METHOD) == method
        if node.IsA("vtkMRMLSegmentationNode"):
            node.GetDisplayNode().SetVisibility(mine)
        elif mine:
            relevance = node
    if relevance is None:
        raise XAIExplainError(f"there is no {method} explanation of {volume_node.GetName()!r} in the scene")
    show_in_slice_views(scene, volume_node, relevance)


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


def _lidc_segment_name(nodule: dict) -> str:
    readers = f"{nodule['readers']} reader" + ("s" if nodule["readers"] > 1 else "")
    return (f"{nodule['name']}: {nodule['label'] or 'not labelled'} ({readers}, median malignancy "
            f"{nodule['malignancy']:g})")


def _lidc_rgb(nodule: dict) -> tuple:
    return {"malignant": POSITIVE_RGB, "benign": NEGATIVE_RGB}.get(nodule["label"], UNLABELLED_RGB)


def _lidc_points_node(nodules: list[dict], name: str, scene):
    points = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
    points.CreateDefaultDisplayNodes()
    for nodule in nodules:
        index = points.AddControlPoint(*lps_to_ras(nodule["center_lps"]), nodule["name"])
        points.SetNthControlPointDescription(index, _lidc_segment_name(nodule))
        points.SetNthControlPointLocked(index, True)
    return points


def explain_volume_node(volume_node, points_or_lidc, methods=("grad-cam",), bundle=None, scene=None,
                        cycle_am=None, device: str = "cpu", series_instance_uid: str | None = None,
                        progress=None, **options) -> VolumeExplanation:
    """Explain the nodules of a CT volume node in this process and show the result in the scene.

    ``points_or_lidc``: a markups point list (its defined points), a sequence of RAS points, or ``"lidc"``
    (the LIDC annotations of the series, found by its SeriesInstanceUID). ``methods``: names from
    ``xaiexplain.available_methods()``. ``bundle``: a classifier bundle name or folder (default the
    shipped demo classifier); ``cycle_am``: the cycle-am bundle. A second call for the same volume
    replaces the first call's nodes. Bad input raises XAIExplainError and leaves the scene unchanged."""
    request = prepare(volume_node, points_or_lidc, methods, bundle, scene, cycle_am, device, series_instance_uid,
                      **options)
    return show(request, compute(request, progress), scene)
