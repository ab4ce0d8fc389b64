"""The file protocol between the module panel and its worker process (``xaiexplain.apps.slicer_worker``).

A job folder (a temporary folder the panel made) holds two output sets, each whole or absent:

- ``request/``: ``volume.nrrd`` (the CT, float32 HU, LPS geometry) and ``request.json`` (points in LPS mm
  or the SeriesInstanceUID for the LIDC annotations, methods, options, bundles, device, and the id of
  Slicer's process, which the worker watches), written by the panel before it starts the worker;
- ``results/``: per method ``relevance_<method>.nrrd`` and ``labels_<method>.nrrd`` (the CT's geometry),
  ``counterfactual_<side>.nrrd`` for cycle-am (each in its own geometry), ``consensus.nrrd`` for LIDC
  series, and ``results.json`` (the per-nodule rows), written by the worker when it has finished.

While it works, the worker writes one JSON object per line on stdout, each with the key ``"xaiexplain"``:
``{"xaiexplain": "started", "pid": ...}``, ``{"xaiexplain": "progress", "fraction": ..., "message": ...}``,
``{"xaiexplain": "done"}`` or ``{"xaiexplain": "error", "message": <one sentence>}``. Any other line
(a library's warning) is only to be logged. Exit status 0: ``results/`` is whole; 2: a user error, the
sentence on the error line; anything else: a defect or a kill, and no ``results/``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from xaiexplain.errors import XAIExplainError
from xaiexplain.io.files import json_text, output_set
from xaiexplain.slicer.request import ExplanationOutput, ExplanationRequest

PROTOCOL = 1
REQUEST, RESULTS = "request", "results"
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
            "cycle_am": request.cycle_am, "device": request.device, "options": dict(request.options)}
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
    """The request of a job folder, or XAIExplainError with one sentence."""
    folder = Path(job_folder) / REQUEST
    data = _manifest(folder / REQUEST_MANIFEST, "request")
    if data.get("protocol") != PROTOCOL:
        raise XAIExplainError(f"{folder} holds a request of protocol {data.get('protocol')}, not {PROTOCOL}; "
                              "the module and its library are of different versions")
    points = data["points_lps"]
    return ExplanationRequest(volume_id=data["volume_id"], volume_name=data["volume_name"],
                              image=sitk.ReadImage(str(folder / VOLUME), sitk.sitkFloat32), methods=data["methods"],
                              points_lps=None if points is None else np.array(points, float).reshape(-1, 3),
                              series_instance_uid=data["series_instance_uid"], classifier=data["classifier"],
                              cycle_am=data["cycle_am"], device=data["device"], options=data["options"])


# -- results ------------------------------------------------------------------------------------------------

def write_results(job_folder, output: ExplanationOutput) -> Path:
    """Write ``output`` into ``job_folder/results`` (one output set); returns that folder."""
    from xaiexplain.explainers.registry import method_file_name

    folder = Path(job_folder) / RESULTS
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
                                 "lidc_nodules": output.lidc_nodules}
    return folder


def read_results(job_folder) -> ExplanationOutput:
    """The results of a finished job, or XAIExplainError with one sentence when there are none."""
    folder = Path(job_folder) / RESULTS
    data = _manifest(folder / RESULTS_MANIFEST, "results")
    files = data["files"]

    def images(names: dict) -> dict:
        return {key: sitk.ReadImage(str(folder / name)) for key, name in names.items()}

    return ExplanationOutput(relevance=images(files["relevance"]), labels=images(files["labels"]),
                             counterfactuals=images(files["counterfactuals"]), nodules=data["nodules"],
                             consensus=sitk.ReadImage(str(folder / files["consensus"])) if files["consensus"] else None,
                             lidc_nodules=data["lidc_nodules"])


def _manifest(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise XAIExplainError(f"{path.parent.parent} holds no {what}") from None
    except (OSError, ValueError) as error:
        raise XAIExplainError(f"{path} cannot be read ({error})") from None


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
