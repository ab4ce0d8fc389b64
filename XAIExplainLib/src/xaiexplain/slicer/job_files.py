"""The file protocol between the module panel and its worker process (``xaiexplain.apps.slicer_worker``).

A job folder (a temporary folder the panel made) holds two output sets, each whole or absent:

- ``request/``: ``volume.nrrd`` (the CT, float32 HU, LPS geometry) and ``request.json`` (points in LPS mm
  or the SeriesInstanceUID for the LIDC annotations, methods, options, bundles, device, the export: its
  formats, folder and the series' DICOM files, and the id of Slicer's process, which the worker watches),
  written by the panel before it starts the worker;
- ``results/``: per method ``relevance_<method>.nrrd`` and ``labels_<method>.nrrd`` (the CT's geometry),
  ``counterfactual_<side>.nrrd`` for cycle-am (each in its own geometry), ``consensus.nrrd`` for LIDC
  series, and ``results.json`` (the per-nodule rows, the model, and the export's folder and files), written by
  the worker when it has finished;
- ``export/``: the export when the request names no folder (DICOM objects for Slicer's DICOM database), an
  ``explain --out`` folder as any export folder is (``job_exports``), written before ``results/``.

While it works, the worker writes one JSON object per line on stdout, each with the key ``"xaiexplain"``:
``{"xaiexplain": "started", "pid": ...}``, ``{"xaiexplain": "progress", "fraction": ..., "message": ...}``,
``{"xaiexplain": "done"}`` or ``{"xaiexplain": "error", "message": <one sentence>}``. Any other line
(a library's warning) is only to be logged. Exit status 0: ``results/`` is whole; 2: a user error, the
sentence on the error line; anything else: a defect or a kill, and no ``results/``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from xaiexplain.errors import XAIExplainError
from xaiexplain.io.files import json_text, output_set
from xaiexplain.io.json_input import read_json
from xaiexplain.io.output_formats import DICOM, checked_formats
from xaiexplain.slicer.request import ExplanationOutput, ExplanationRequest

PROTOCOL = 1
REQUEST, RESULTS, EXPORT = "request", "results", "export"
REQUEST_MANIFEST, RESULTS_MANIFEST = "request.json", "results.json"
VOLUME = "volume.nrrd"
LINE_KEY = "xaiexplain"
EXIT_USER_ERROR = 2


# -- request ------------------------------------------------------------------------------------------------

def write_request(job_folder, request: ExplanationRequest, slicer_pid: int | None = None) -> Path:
    """Write ``request`` into ``job_folder/request`` (one output set); returns that folder. ``slicer_pid``:
    the process the worker serves, which it outlives by at most a moment."""
    data = {"slicer_pid": slicer_pid, "protocol": PROTOCOL, "volume_id": request.volume_id, "volume_name": request.volume_name,
            "methods": list(request.methods),
            "points_lps": None if request.points_lps is None else np.asarray(request.points_lps, float).tolist(),
            "series_instance_uid": request.series_instance_uid, "classifier": request.classifier,
            "cycle_am": request.cycle_am, "device": request.device, "options": dict(request.options),
            "export_formats": None if request.export_formats is None else list(request.export_formats),
            "export_folder": request.export_folder, "source_files": [str(f) for f in request.source_files]}
    try:
        json_text(data)
    except TypeError:
        raise XAIExplainError("the methods' options must be numbers, strings or lists to go to the worker") from None
    folder = Path(job_folder) / REQUEST
    with output_set(folder, REQUEST_MANIFEST) as written:
        sitk.WriteImage(request.image, str(written.path(VOLUME)), useCompression=False)
        written.manifest_data = data
    return folder


def read_slicer_pid(job_folder) -> int | None:
    """The id of the process a job's worker serves, or None when the request names none or is unreadable
    (``read_request`` then says why)."""
    try:
        pid = json.loads((Path(job_folder) / REQUEST / REQUEST_MANIFEST).read_text()).get("slicer_pid")
    except (OSError, ValueError, AttributeError):
        return None
    return pid if isinstance(pid, int) else None


def read_request(job_folder) -> ExplanationRequest:
    """The request of a job folder, each field checked as the command line checks its arguments, or
    XAIExplainError with one sentence."""
    from xaiexplain.devices import DEVICE_CHOICES
    from xaiexplain.explainers.on_patches import parse_options

    folder = Path(job_folder) / REQUEST
    manifest = folder / REQUEST_MANIFEST
    data = _manifest(manifest, "request")
    _new_results_folder(job_folder)  # refused before the work, not after it
    if data.get("protocol") != PROTOCOL:
        raise XAIExplainError(f"{folder} holds a request of protocol {data.get('protocol')}, not {PROTOCOL}; "
                              "the module and its library are of different versions")

    def field(key: str, valid, should_be: str):
        value = data.get(key)
        if not valid(value):
            raise XAIExplainError(f"{manifest} needs {key} to be {should_be}, not {_shown(value)}")
        return value

    def name_or_none(value) -> bool:
        return value is None or (isinstance(value, str) and value.strip() != "")

    methods = field("methods", lambda v: isinstance(v, list) and v and all(isinstance(m, str) for m in v),
                    "a list of at least one method name")
    points = field("points_lps", lambda v: v is None or (isinstance(v, list) and v and all(
        isinstance(p, list) and len(p) == 3 and all(_finite_number(c) for c in p) for p in v)),
        "null (the LIDC annotations) or a list of points, each three finite LPS millimetres")
    device = field("device", lambda v: v in DEVICE_CHOICES, f"one of {', '.join(DEVICE_CHOICES)}")
    options = field("options", lambda v: isinstance(v, dict), "an object of the methods' options")
    texts = {key: field(key, name_or_none, "a name or null") for key in
             ("classifier", "cycle_am", "series_instance_uid")}
    if points is None and texts["series_instance_uid"] is None:
        raise XAIExplainError(f"{manifest} gives neither points nor the series_instance_uid of the LIDC annotations")
    formats = field("export_formats", lambda v: v is None or (isinstance(v, list) and all(isinstance(f, str) for f in v)),
                    "null (no export) or a list of format names")
    export_folder = field("export_folder", name_or_none, "a folder or null")
    source_files = field("source_files", lambda v: v is None or (isinstance(v, list) and all(
        isinstance(f, str) and f for f in v)), "a list of the series' DICOM files")
    formats = None if formats is None else checked_formats(formats)
    if formats and DICOM in formats and not source_files:
        raise XAIExplainError(f"{manifest} asks for DICOM objects but lists no DICOM files of the series")
    return ExplanationRequest(volume_id=str(data.get("volume_id")), volume_name=str(data.get("volume_name")),
                              image=_read_image(folder / VOLUME, sitk.sitkFloat32), methods=methods,
                              points_lps=None if points is None else np.array(points, float),
                              device=device, options=parse_options(methods, options), export_formats=formats,
                              export_folder=export_folder, source_files=list(source_files or []), **texts)


# -- results ------------------------------------------------------------------------------------------------

def write_results(job_folder, output: ExplanationOutput) -> Path:
    """Write ``output`` into ``job_folder/results`` (one output set); returns that folder. Its ``export``, written
    already, is named by its folder and files."""
    from xaiexplain.explainers.registry import method_file_name

    folder = _new_results_folder(job_folder)
    with output_set(folder, RESULTS_MANIFEST) as written:
        files = {"relevance": {}, "labels": {}, "counterfactuals": {}, "consensus": None}
        for kind in ("relevance", "labels"):
            for method, image in getattr(output, kind).items():
                files[kind][method] = f"{kind}_{method_file_name(method)}.nrrd"
                sitk.WriteImage(image, str(written.path(files[kind][method])), useCompression=False)
        for side, image in output.counterfactuals.items():
            files["counterfactuals"][side] = f"counterfactual_{side}.nrrd"
            sitk.WriteImage(image, str(written.path(files["counterfactuals"][side])), useCompression=False)
        if output.consensus is not None:
            files["consensus"] = "consensus.nrrd"
            sitk.WriteImage(output.consensus, str(written.path(files["consensus"])), useCompression=False)
        written.manifest_data = {"protocol": PROTOCOL, "files": files, "nodules": output.nodules,
                                 "lidc_nodules": output.lidc_nodules, "model": output.model, "export": output.export}
    return folder


def _new_results_folder(job_folder) -> Path:
    """The job's results folder, refused if anything is there already (a link would take the results out
    of the job): a job's results are written once, by its worker."""
    folder = Path(job_folder) / RESULTS
    if os.path.lexists(folder):
        raise XAIExplainError(f"{folder} exists already, so no results are written there; start a new job")
    return folder


def read_results(job_folder) -> ExplanationOutput:
    """The results of a finished job, or XAIExplainError with one sentence when there are none."""
    folder = Path(job_folder) / RESULTS
    if folder.is_symlink():
        raise XAIExplainError(f"{folder} is a link, not the results its worker wrote")
    manifest = folder / RESULTS_MANIFEST
    data = _manifest(manifest, "results")
    try:
        files = data["files"]
        groups = {kind: dict(files[kind]) for kind in ("relevance", "labels", "counterfactuals")}
        nodules, lidc_nodules, consensus = data["nodules"], data["lidc_nodules"], files["consensus"]
        export = data.get("export")
        if export is not None and not (isinstance(export.get("folder"), str) and isinstance(export.get("files"), dict)):
            raise TypeError
    except (KeyError, TypeError, ValueError, AttributeError):
        raise XAIExplainError(f"{manifest} is not the results manifest of this library") from None

    def image(name) -> sitk.Image:
        # only the files beside the manifest: a name reaching elsewhere is not one the worker wrote
        if not (isinstance(name, str) and name == Path(name).name and name not in ("", ".", "..")) \
                or (folder / name).is_symlink():
            raise XAIExplainError(f"{manifest} names {_shown(name)}, which is not a file of its results folder")
        return _read_image(folder / name)

    return ExplanationOutput(**{kind: {key: image(name) for key, name in names.items()}
                                for kind, names in groups.items()},
                             nodules=nodules, consensus=image(consensus) if consensus else None,
                             lidc_nodules=lidc_nodules, model=str(data.get("model") or ""), export=export)


def _manifest(path: Path, what: str) -> dict:
    try:
        data = read_json(path)
    except FileNotFoundError:
        raise XAIExplainError(f"{path.parent.parent} holds no {what}") from None
    except OSError as error:
        raise XAIExplainError(f"{path} cannot be read ({error.strerror or error})") from None
    if not isinstance(data, dict):
        raise XAIExplainError(f"{path} is not a {what} manifest (a JSON object)")
    return data


def _read_image(path: Path, pixel_type=sitk.sitkUnknown) -> sitk.Image:
    try:
        return sitk.ReadImage(str(path), pixel_type)
    except RuntimeError:  # SimpleITK's for a missing or damaged file
        raise XAIExplainError(f"{path} cannot be read as an image") from None


def _finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def _shown(value) -> str:
    """A value of a request or manifest in a sentence, short."""
    text = json.dumps(value) if isinstance(value, (str, int, float, list, dict, type(None))) else repr(value)
    return text if len(text) <= 60 else text[:56] + " ..."


# -- progress lines -----------------------------------------------------------------------------------------

def line(event: str, **fields) -> str:
    """One line of the worker's stdout."""
    return json.dumps({LINE_KEY: event, **fields}, allow_nan=False)


def parse_line(text: str) -> dict | None:
    """The event of a worker's line, or None for a line that is not one of ours (to be logged)."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) and isinstance(data.get(LINE_KEY), str) else None
