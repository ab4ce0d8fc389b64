"""An explanation request read from the scene (``prepare``, main thread) and computed without touching
MRML (``compute``, any thread or another process)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from xaiexplain.errors import XAIExplainError
from xaiexplain.slicer.conversion import (
    SERIES_UID,
    image_from_volume_node,
    scene_or_default,
    slicer_module,
    world_to_volume_lps,
)


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
    slicer = slicer_module()
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
    return world_to_volume_lps(volume_node, ras)


def prepare(volume_node, points_or_lidc, methods, bundle=None, scene=None, cycle_am=None, device: str = "cpu",
            series_instance_uid: str | None = None, **options) -> ExplanationRequest:
    """Check a request and copy what it needs from the scene. Raises XAIExplainError with one sentence
    for a missing volume, an empty point list, an unknown method or a missing bundle; the scene is left
    as it was."""
    from xaiexplain.data.patches import check_point_inside
    from xaiexplain.explainers import registry
    from xaiexplain.explainers.counterfactuals import DEFAULT_CYCLE_AM
    from xaiexplain.explainers.on_patches import split_options
    from xaiexplain.models.bundles import load_bundle

    scene = scene_or_default(scene)
    methods = [methods] if isinstance(methods, str) else list(methods or [])
    if not methods:
        raise XAIExplainError("choose at least one method")
    split_options(methods, options)  # unknown methods and options end here, before anything is read
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
    uses_generators = any("generators" in registry.get(m).defaults for m in methods)
    generators = load_bundle(cycle_am or DEFAULT_CYCLE_AM, device=device, role="cycle-am") if uses_generators else None
    return ExplanationRequest(volume_id=volume_node.GetID(), volume_name=volume_node.GetName(), image=image,
                              methods=methods, bundle=classifier, cycle_am=generators, points_lps=points_lps,
                              series_instance_uid=series_instance_uid, options=options)


def compute(request: ExplanationRequest, progress=None, should_stop=None) -> ExplanationOutput:
    """Run the request's methods; touches no MRML. ``progress(fraction, message)`` is called as methods
    finish; ``should_stop()`` returning True ends the run with ``Cancelled`` after the current method."""
    from xaiexplain.data.nodule_sites import consensus_label_image, lidc_sites
    from xaiexplain.data.series import CTSeries
    from xaiexplain.explainers.on_series import explain_series

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
