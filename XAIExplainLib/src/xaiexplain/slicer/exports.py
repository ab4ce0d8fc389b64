"""The panel's export of an explanation, on Slicer's side (no torch): which formats go where (``ExportChoice``),
the DICOM files of the volume's series that the DICOM objects reference (``source_series_files``, from Slicer's
DICOM database), and the worker's DICOM objects added to that database afterwards (``add_to_dicom_database``),
as Slicer's own DICOM export does: the objects are new series of the input's patient and study, so the DICOM
browser lists them beside the input series.

The worker writes the files (``xaiexplain.slicer.job_exports``); the database and its importer are arguments
here, so that the tests pass stand-ins for ``slicer.dicomDatabase`` and ``DICOMUtils.importDicom``.
"""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from xaiexplain.errors import XAIExplainError
from xaiexplain.io.output_formats import DICOM, NIFTI, checked_formats

INSTANCE_UIDS = "DICOM.instanceUIDs"  # Slicer's DICOM scalar volume plugin: the slices' SOPInstanceUIDs, in order


@dataclass(frozen=True)
class ExportChoice:
    """What the panel (or a console call) asks to export besides showing the results: DICOM and NIfTI files
    into ``folder`` (an ``explain --out`` folder: NRRD and ``nodules.json`` too), and the DICOM objects into
    Slicer's DICOM database. Without a folder the DICOM objects go to the database only."""

    dicom: bool = False
    nifti: bool = False
    folder: str = ""
    to_dicom_database: bool = True

    @property
    def formats(self) -> tuple[str, ...] | None:
        """The formats the worker writes (NRRD first), or None: nothing to export."""
        if not (self.dicom or self.nifti or self.folder.strip()):
            return None
        return checked_formats([name for name, chosen in ((DICOM, self.dicom), (NIFTI, self.nifti)) if chosen])

    @property
    def adds_to_database(self) -> bool:
        return self.dicom and self.to_dicom_database

    def problem(self, platform: str | None = None) -> str | None:
        """Why this export cannot run (one sentence), or None."""
        from xaiexplain.slicer.environment import dicom_output_unavailable

        unavailable = dicom_output_unavailable(platform) if self.dicom else None
        if unavailable:
            return unavailable
        if self.nifti and not self.folder.strip():
            return "Choose an export folder for the NIfTI files."
        if self.dicom and not self.folder.strip() and not self.to_dicom_database:
            return "Choose an export folder for the DICOM files, or add them to Slicer's DICOM database."
        return None


def source_series_files(volume_node, database) -> list[str]:
    """The DICOM files of the series ``volume_node`` was loaded from, slice by slice, as Slicer's DICOM
    database (``slicer.dicomDatabase``) holds them; one sentence for a volume that did not come from it."""
    uids = (volume_node.GetAttribute(INSTANCE_UIDS) or "").split()
    name = volume_node.GetName()
    if not uids:
        raise XAIExplainError(f"volume {name!r} was not loaded through Slicer's DICOM module, so no DICOM object can "
                              "reference its series; load the series from the DICOM database, or export NIfTI only")
    if database is None or not database.isOpen:
        raise XAIExplainError("Slicer has no DICOM database open, which the DICOM export needs: open the DICOM "
                              "module once (it creates one)")
    files = [database.fileForInstance(uid) for uid in uids]
    missing = [uid for uid, path in zip(uids, files) if not path or not Path(path).is_file()]
    if missing:
        raise XAIExplainError(f"{len(missing)} of the {len(uids)} DICOM files of volume {name!r} are no longer in "
                              f"Slicer's DICOM database (instance {missing[0]}); import its series again")
    return files


def exported_dicom_files(export: dict | None) -> list[Path]:
    """The DICOM objects the worker wrote (the results' ``export``: its folder and ``nodules.json``'s files)."""
    if not export:
        return []
    folder, names = Path(export["folder"]), []
    for key, entry in export["files"].items():
        entries = entry.items() if isinstance(entry, dict) else [(key, entry)]
        names += [name for kind, name in entries if kind.endswith("_dicom") and name]
    for name in names:
        if not (isinstance(name, str) and name == Path(name).name and name not in (".", "..")):
            raise XAIExplainError(f"the export of {folder} names {name!r}, which is not a file of that folder")
    return [folder / name for name in names]


def add_to_dicom_database(files, import_folder, database, temporary_root=None) -> list[str]:
    """Add the DICOM objects ``files`` to ``database`` (``slicer.dicomDatabase``) through ``import_folder``
    (in Slicer ``lambda folder: DICOMUtils.importDicom(folder, slicer.dicomDatabase, copyFiles=True)``: the
    database keeps its own copies, as Slicer's export to the database does), from a temporary folder holding
    only them (an export folder holds NRRD and NIfTI too); returns their SOPInstanceUIDs. One sentence when the
    database did not take one."""
    import pydicom

    from xaiexplain.io.dicom_outputs import link_or_copy

    if not files:
        return []
    if database is None or not database.isOpen:
        raise XAIExplainError("Slicer has no DICOM database open to add the DICOM objects to: open the DICOM module "
                              "once (it creates one)")
    uids = [str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)
            for path in files]
    folder = Path(tempfile.mkdtemp(prefix="xaiexplain-dicom-import-", dir=temporary_root))
    try:
        for path in files:
            link_or_copy(Path(path), folder / Path(path).name)
        imported = import_folder(str(folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    missing = [Path(path).name for path, uid in zip(files, uids) if not database.fileForInstance(uid)]
    if imported is False or missing:
        raise XAIExplainError(f"Slicer's DICOM database did not take {missing[0] if missing else 'the objects'} (the "
                              "Python console says why); the files are in the export folder")
    return uids
