"""The worker's export of an explanation (the panel's *Export*): the same files as ``xaiexplain explain --out
FOLDER --format ...`` writes for the series, as one output set with ``nodules.json`` as its manifest: NRRD always,
DICOM (a Segmentation and a Parametric Map per method, cycle-am's counterfactuals) and NIfTI on request. The DICOM
objects reference the files of the series the volume was loaded from (``ExplanationRequest.source_files``) and get
the UIDs ``explain`` gives the same explanation of that series. Everything that can be refused is refused by
``plan_export`` before the models run."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from xaiexplain import __version__
from xaiexplain.io import dicom_outputs
from xaiexplain.io.explanation_files import EXPLAIN_OWNER, SERIES_MANIFEST, explanation_identity, write_copies
from xaiexplain.io.files import check_output_folder, output_set
from xaiexplain.io.output_formats import DICOM
from xaiexplain.slicer.job_files import EXPORT
from xaiexplain.slicer.request import ExplanationOutput, ExplanationRequest

EXPORT_COMMAND = "XAIExplain module (3D Slicer)"  # the manifest's command: no command line made it


@dataclass(frozen=True)
class ExportPlan:
    folder: Path
    formats: tuple[str, ...]
    source: dicom_outputs.DicomSource | None  # the series' instances the DICOM objects reference


def plan_export(job_folder, request: ExplanationRequest) -> ExportPlan | None:
    """The request's export checked before anything is computed (dcmqi here, the series' files and their grid
    against the volume's, the folder writable and not another command's), or None when it asks for none."""
    if request.export_formats is None:
        return None
    folder = Path(request.export_folder) if request.export_folder else Path(job_folder) / EXPORT
    check_output_folder(folder, SERIES_MANIFEST, EXPLAIN_OWNER)
    source = None
    if DICOM in request.export_formats:
        dicom_outputs.check_dicom_writer()
        source = dicom_outputs.dicom_source_of_files(request.source_files, request.image,
                                                     f"volume {request.volume_name!r}")
    return ExportPlan(folder, tuple(request.export_formats), source)


def write_export(plan: ExportPlan, request: ExplanationRequest, output: ExplanationOutput) -> dict:
    """Write the export (one output set, owned as ``explain``'s: the same files under the same names); returns
    the results' ``export``: its folder and ``nodules.json``'s files."""
    from xaiexplain.data.patches import DEFAULT_HALF_HEIGHT_MM
    from xaiexplain.explainers import registry

    recorded = request.recorded_options()
    points = None if request.points_lps is None else [list(map(float, p)) for p in request.points_lps]
    series_uid = plan.source.series_instance_uid if plan.source else request.series_instance_uid
    identity = explanation_identity(series_uid or "", output.model, recorded, points, DEFAULT_HALF_HEIGHT_MM)
    with output_set(plan.folder, SERIES_MANIFEST, owner=EXPLAIN_OWNER) as written:
        files = write_copies(written, output, request.methods, plan.formats, plan.source, identity,
                             Path(output.model).name, recorded)
        written.manifest_data = {
            "series_folder": str(plan.source.folder) if plan.source else None, "volume": request.volume_name,
            "patient_id": plan.source.patient_id if plan.source else None, "series_instance_uid": series_uid,
            "model": output.model, "methods": list(request.methods), "options": recorded,
            "nodules_from": "points" if points else "lidc", "points_lps": points, "command": EXPORT_COMMAND,
            "library_version": __version__, "formats": list(plan.formats), "files": files,
            "label_values": {m: dict(registry.get(m).map_kind.labels) for m in request.methods},
            "nodules": output.nodules}
    return {"folder": str(plan.folder), "files": files}
