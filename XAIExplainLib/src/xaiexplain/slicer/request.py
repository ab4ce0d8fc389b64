"""An explanation request read from the scene (``prepare``) and computed without touching MRML
(``compute``, in this process or in the module panel's worker process).

A request holds plain data only (the volume as a SimpleITK image, LPS points, names of methods and
bundles), so that it can be written to a request folder and read back in another process unchanged; the
models are loaded by ``compute``. An output holds images and JSON-able rows only, so that it can be
written as files and read back for ``display.show``.
"""
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
from xaiexplain.slicer.inputs import defined_points_ras


@dataclass
class ExplanationRequest:
    """A checked request: what the scene gave (copied) and what the user chose, by name."""

    volume_id: str
    volume_name: str
    image: sitk.Image  # float32 HU, LPS
    methods: list[str]
    points_lps: np.ndarray | None  # (N, 3), or None for the LIDC annotations
    series_instance_uid: str | None
    classifier: str | None = None  # bundle name or folder; None: the shipped demo classifier
    cycle_am: str | None = None  # cycle-am bundle name or folder; None: the shipped one
    device: str = "cpu"
    options: dict = field(default_factory=dict)
    # the export besides the results (``exports.ExportChoice``): None, or the formats (NRRD first) written into
    # export_folder (None: the job folder, for Slicer's DICOM database only); DICOM objects reference the
    # series' files, source_files
    export_formats: tuple[str, ...] | None = None
    export_folder: str | None = None
    source_files: list[str] = field(default_factory=list)

    @property
    def uses_generators(self) -> bool:
        from xaiexplain.explainers import registry

        return any("generators" in registry.get(m).defaults for m in self.methods)

    def recorded_options(self) -> dict:
        return recorded_options_of(self.methods, self.options, self.cycle_am)


def recorded_options_of(methods, options: dict, cycle_am=None) -> dict:
    """The options as ``explain`` records them (the DICOM objects' UIDs are made of them): cycle-am's bundle
    among them as ``generators`` where a method takes it."""
    from xaiexplain.explainers import registry
    from xaiexplain.io.explanation_files import recorded_options

    takes_generators = any("generators" in registry.get(m).defaults for m in methods)
    return recorded_options({**options, **({"generators": str(cycle_am)} if cycle_am and takes_generators else {})})


@dataclass
class ExplanationOutput:
    """What ``compute`` returns: per method the relevance and label images (the series' geometry), the
    counterfactual volumes of cycle-am (each in its own geometry), one row per nodule, and for LIDC series
    the consensus label image (nodule_index + 1 inside each nodule) and the annotated nodules."""

    relevance: dict[str, sitk.Image]
    labels: dict[str, sitk.Image]
    counterfactuals: dict[str, sitk.Image]
    nodules: list[dict]
    consensus: sitk.Image | None = None
    # per annotated nodule: name, center_lps, nodule_index, readers, label, malignancy (median rating)
    lidc_nodules: list[dict] = field(default_factory=list)
    model: str = ""  # the classifier bundle's folder
    export: dict | None = None  # what the worker exported: {"folder": ..., "files": nodules.json's files}


@dataclass
class VolumeExplanation:
    """The nodes ``show`` created, and what they show."""

    relevance: dict  # method -> scalar volume node
    outlines: dict  # method -> segmentation node, the segments of the method's kind
    counterfactuals: dict  # "malignant" / "benign" -> scalar volume node (cycle-am only)
    table: object
    lidc_points: object | None
    lidc_consensus: object | None
    output: ExplanationOutput

    def nodes(self) -> list:
        return [*self.relevance.values(), *self.outlines.values(), *self.counterfactuals.values(), self.table,
                *(n for n in (self.lidc_points, self.lidc_consensus) if n is not None)]


def _series_uid_of(volume_node, scene) -> str | None:
    """The SeriesInstanceUID of a volume: our attribute, else the one Slicer's DICOM module records in the
    subject hierarchy."""
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
    """Nodule locations as LPS points in the volume's frame: from a markups node (its defined points, in
    world RAS) or from a sequence of RAS points."""
    if points is not None and hasattr(points, "GetNumberOfControlPoints"):
        ras = defined_points_ras(points)
        if len(ras) == 0:
            raise XAIExplainError(f"point list {points.GetName()!r} has no points: place one on each nodule")
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
            series_instance_uid: str | None = None, export=None, dicom_database=None, **options) -> ExplanationRequest:
    """Check a request and copy what it needs from the scene. Raises XAIExplainError with one sentence
    for a missing volume, an empty point list, a point outside the volume or an unknown method or option;
    the scene is left as it was. Bundles are named, not loaded: ``compute`` loads them. ``export``: an
    ``exports.ExportChoice``; for DICOM the volume's files are looked up in ``dicom_database`` (default
    ``slicer.dicomDatabase``)."""
    from xaiexplain.data.patches import check_point_inside
    from xaiexplain.slicer.methods import check_methods_and_options

    scene = scene_or_default(scene)
    methods = [methods] if isinstance(methods, str) else list(methods or [])
    if not methods:
        raise XAIExplainError("choose at least one method")
    # unknown methods and options, and values not of their type or range, end here, before anything is read;
    # from the method table: no torch in Slicer's process
    options = check_methods_and_options(methods, options)
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
    return ExplanationRequest(volume_id=volume_node.GetID(), volume_name=volume_node.GetName(), image=image,
                              methods=methods, points_lps=points_lps, series_instance_uid=series_instance_uid,
                              classifier=None if bundle is None else str(bundle),
                              cycle_am=None if cycle_am is None else str(cycle_am), device=device, options=options,
                              **_export_fields(volume_node, export, dicom_database))


def _export_fields(volume_node, export, dicom_database) -> dict:
    """The request's export fields for ``export`` (an ``exports.ExportChoice`` or None), checked."""
    from xaiexplain.io.output_formats import DICOM
    from xaiexplain.slicer.exports import source_series_files

    if export is None or export.formats is None:
        return {}
    problem = export.problem()
    if problem:
        raise XAIExplainError(problem.rstrip("."))
    if DICOM in export.formats and dicom_database is None:
        dicom_database = getattr(slicer_module(), "dicomDatabase", None)
    return {"export_formats": export.formats, "export_folder": export.folder.strip() or None,
            "source_files": source_series_files(volume_node, dicom_database) if DICOM in export.formats else []}


def compute(request: ExplanationRequest, progress=None) -> ExplanationOutput:
    """Load the request's bundles and run its methods; touches no MRML. ``progress(fraction, message)`` is
    called at each step: loading the models, finding the LIDC annotations, each method."""
    from xaiexplain.data.nodule_sites import consensus_label_image, lidc_sites
    from xaiexplain.data.series import CTSeries
    from xaiexplain.devices import select_device
    from xaiexplain.explainers.counterfactuals import generators_for
    from xaiexplain.explainers.on_series import explain_series
    from xaiexplain.models.bundles import DEFAULT_CLASSIFIER, load_bundle

    def report(fraction, message):
        if progress is not None:
            progress(fraction, message)

    if not request.methods:
        raise XAIExplainError("choose at least one method")
    device = select_device(request.device)  # cuda without a GPU: the command line's sentence
    report(0.0, "loading the models")
    classifier = load_bundle(request.classifier or DEFAULT_CLASSIFIER, device=device)
    # cycle-am's generators on the classifier's device, refused unless trained against it
    generators = (generators_for(classifier, request.cycle_am, request.options.get("allow_other_classifier", False))
                  if request.uses_generators else None)
    consensus, sites = None, []
    if request.points_lps is None:
        report(0.02, "finding the LIDC annotations")
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
    count = len(request.methods)

    def step(done: int) -> None:
        if done < count:
            report(0.05 + 0.9 * done / count, f"explaining with {request.methods[done]} ({done + 1} of {count})")

    finished = []
    step(0)

    def method_done(method):
        finished.append(method)
        step(len(finished))

    series = explain_series(request.image, where, classifier, request.methods, progress=method_done,
                            cycle_am=generators, **request.options)
    report(0.95, "explained")
    return ExplanationOutput(relevance=dict(series.relevance), labels=dict(series.labels),
                             counterfactuals=dict(series.counterfactuals), nodules=series.nodules,
                             consensus=consensus, lidc_nodules=[_lidc_nodule(site) for site in sites],
                             model=str(classifier.path))


def _lidc_nodule(site) -> dict:
    nodule = site.lidc
    return {"name": site.name, "center_lps": [float(v) for v in site.center_lps], "nodule_index": nodule.nodule_index,
            "readers": nodule.n_readers, "label": nodule.label, "malignancy": float(nodule.ratings["malignancy"])}
