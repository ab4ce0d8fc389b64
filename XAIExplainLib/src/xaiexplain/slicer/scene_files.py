"""Scenes as files: saving a scene with its data (one output set, file names relative to the scene),
loading it back, and the batch's explanation of a DICOM series folder into a saved scene."""
from __future__ import annotations

import contextlib
import hashlib
import re
from pathlib import Path

from xaiexplain.errors import XAIExplainError
from xaiexplain.io.files import output_set, safe_name
from xaiexplain.slicer.conversion import SERIES_UID, add_volume_node, lps_to_ras, nodes_of_class, slicer_module
from xaiexplain.slicer.display import explain_volume_node


SCENE_OWNER = "XAIExplainBatch.py"  # recorded in the manifest: `xaiexplain explain` uses the same names


@contextlib.contextmanager
def scene_output_set(scene, folder, manifest: str = "nodules.json"):
    """An output set for a scene (``xaiexplain.io.files.output_set``), opened before the scene is filled so
    that the folder is checked first. The caller fills ``scene`` and sets ``written.manifest_data``; on
    leaving, every storable node is written beside a ``scene.mrml`` (volumes as NRRD, segmentations as
    .seg.nrrd, tables as TSV, point lists as JSON) that refers to them relative to its own folder, so the
    folder can be moved; an existing folder keeps every file that no earlier scene of this kind wrote, and a
    folder holding another command's set (``xaiexplain explain``'s) is refused, never replaced."""
    folder = Path(folder).absolute()
    with output_set(folder, manifest, owner=SCENE_OWNER) as written:
        yield written
        stored = _write_scene(scene, written, folder)
    for storage, name in stored:  # the scene in memory now refers to the files where they are
        storage.SetFileName(str(folder / name))
    scene.SetRootDirectory(str(folder))
    scene.SetURL(str(folder / "scene.mrml"))


def save_scene(scene, folder, summary: dict | None = None, manifest: str = "nodules.json") -> Path:
    """Write the scene as in ``scene_output_set``, with ``summary`` (JSON) as the manifest written last."""
    with scene_output_set(scene, folder, manifest) as written:
        written.manifest_data = summary or {}
    return Path(folder).absolute() / "scene.mrml"


def _write_scene(scene, written, folder: Path) -> list:
    """The storable nodes and ``scene.mrml`` into the set's staging folder; (storage node, file name) pairs."""
    used, stored = set(), []
    for node in nodes_of_class(scene, "vtkMRMLStorableNode"):
        if node.GetHideFromEditors() and not node.IsA("vtkMRMLColorTableNode"):
            continue
        if node.IsA("vtkMRMLColorTableNode") and node.GetType() != node.User:
            continue  # built-in tables are not files
        storage = node.GetStorageNode()
        if storage is None:
            storage = node.CreateDefaultStorageNode()
            if storage is None and node.IsA("vtkMRMLMarkupsNode"):
                # needs Slicer's markups logic in the application; the storage class itself is in MRML
                storage = slicer_module().vtkMRMLMarkupsJsonStorageNode()
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
    # Commit writes each file name relative to the folder of the scene file it writes: while the files are
    # staged beside it, that is just the name
    scene.SetRootDirectory(str(written.staging))
    if not scene.Commit(str(written.path("scene.mrml"))):
        raise XAIExplainError(f"could not write the scene into {folder}")
    return stored


def load_scene(path, scene=None):
    """Read a scene file into ``scene`` (a new vtkMRMLScene by default), its nodes' data included."""
    slicer = slicer_module()
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
                          allow_gaps: bool = False, written_by_this_run: dict | None = None,
                          allow_implausible_hu: bool = False, formats=None) -> Path:
    """Read a DICOM series, explain it in a new scene and save that scene with its NRRD files and
    ``nodules.json`` into ``out_root/<patient>_<SeriesInstanceUID>`` (one output set: whole or absent).
    ``points_lps``: nodule locations in LPS mm, as the ``xaiexplain`` command line takes them; None for the
    LIDC annotations. ``written_by_this_run`` (folder name -> series folder) makes a batch refuse a second
    series that would write the same folder. ``formats``: also DICOM and NIfTI, as ``explain --format`` writes
    them (the same names and UIDs), beside the scene. Returns the scene file."""
    from xaiexplain import __version__
    from xaiexplain.data.series import read_series
    from xaiexplain.io import dicom_outputs
    from xaiexplain.io.output_formats import DICOM, NRRD, checked_formats

    slicer = slicer_module()
    formats = checked_formats(formats)
    if DICOM in formats:
        dicom_outputs.check_dicom_writer()
    ct = read_series(series_folder, series_instance_uid, allow_gaps=allow_gaps, allow_implausible_hu=allow_implausible_hu)
    source = dicom_outputs.dicom_source(ct, series_folder) if DICOM in formats else None  # before computing
    name = series_output_name(ct.patient_id, ct.series_instance_uid)
    if written_by_this_run is not None:
        if name in written_by_this_run:
            raise XAIExplainError(f"it is the same series (PatientID and SeriesInstanceUID) as "
                                  f"{written_by_this_run[name]}, already written to {name}")
        written_by_this_run[name] = str(series_folder)
    scene = slicer.vtkMRMLScene()
    with scene_output_set(scene, Path(out_root) / name) as written:  # the folder is checked before computing
        selection = slicer.vtkMRMLSelectionNode()  # every Slicer scene has one; markups look up units in it
        selection.SetSingletonTag("Singleton")
        scene.AddNode(selection)
        volume = add_volume_node(ct.image, ct.patient_id or "CT", scene)
        volume.SetAttribute(SERIES_UID, ct.series_instance_uid)
        display = volume.GetDisplayNode()
        display.AutoWindowLevelOff()
        display.SetWindowLevel(1500.0, -550.0)  # lung window
        points = "lidc" if points_lps is None else [lps_to_ras(p) for p in points_lps]
        result = explain_volume_node(volume, points, methods, bundle, scene, cycle_am, device, progress=progress)
        # the scene stores the NRRD images under its nodes' names; the copies in the other formats as explain's
        copies = _write_copies(written, result, ct, source, [f for f in formats if f != NRRD], points_lps, cycle_am)
        written.manifest_data = {
            "series_folder": str(series_folder), "patient_id": ct.patient_id,
            "series_instance_uid": ct.series_instance_uid, "methods": list(result.relevance),
            "library_version": __version__, "scene": "scene.mrml", "slice_gaps_mm": [list(g) for g in ct.gaps],
            "formats": list(formats), "files": copies, "nodules": result.output.nodules}
    return written.folder / "scene.mrml"


def _write_copies(written, result, ct, source, formats, points_lps, cycle_am) -> dict:
    """The explanation's DICOM and NIfTI files, with the UIDs ``explain`` gives the same explanation."""
    from xaiexplain.io.explanation_files import explanation_identity, write_copies
    from xaiexplain.slicer.request import recorded_options_of

    if not formats:
        return {}
    methods = list(result.relevance)
    recorded = recorded_options_of(methods, {}, cycle_am)
    points = None if points_lps is None else [list(map(float, p)) for p in points_lps]
    identity = explanation_identity(ct.series_instance_uid, result.output.model, recorded, points)
    return write_copies(written, result.output, methods, formats, source, identity, Path(result.output.model).name,
                        recorded)
