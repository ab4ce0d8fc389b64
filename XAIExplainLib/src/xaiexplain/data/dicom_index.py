"""An index of the DICOM series under a folder by SeriesInstanceUID, from the files' headers only (never
their names or the folder layout), so that any layout TCIA has used for a LIDC-IDRI download works:
``LIDC-IDRI-0001/<StudyInstanceUID>/<SeriesInstanceUID>/*.dcm`` as well as the NBIA Data Retriever's
``LIDC-IDRI-0001/01-01-2000-NA-NA-30178/3000566.000000-NA-03192/1-001.dcm``.

Files that are not DICOM (the readers' XML, READMEs, the phantom's NRRD ground truth), DICOMDIR files and
objects that are not images (SEG, SR, ...) are left out; DICOM files that cannot be read are counted
apart. Every series keeps its modality, so callers take the CT series and leave the CR / DX studies some
LIDC patients have, and a key of its content (``IndexedSeries.content_key``: every file's header bytes and
size), so that a result made from it is redone when a header changed, whatever the files' sizes and times.
"""
from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pydicom

from xaiexplain.data.series import DICOMDIR_SOP_CLASS, is_non_image, modality_of, quiet_pydicom
from xaiexplain.errors import XAIExplainError
from xaiexplain.parallel import map_in_workers

INDEX_TAGS = ["SOPClassUID", "Modality", "PatientID", "StudyInstanceUID", "SeriesInstanceUID"]
FILES_PER_TASK = 2000


@dataclass
class IndexedSeries:
    series_instance_uid: str
    patient_id: str
    study_instance_uid: str
    modality: str
    files: list[Path]  # sorted by path
    file_keys: list[str] = field(default_factory=list)  # per file (as ``files``): its header bytes' hash and size

    @property
    def folder(self) -> Path:
        """The deepest folder holding all the series' files."""
        return Path(os.path.commonpath([str(f.parent) for f in self.files]))

    @property
    def content_key(self) -> str:
        """A hash of every file's header (all it holds before the pixel data) and size, whatever the files'
        names and times: what a result made from this series depends on."""
        return hashlib.sha256("\n".join(sorted(self.file_keys)).encode("ascii")).hexdigest()


@dataclass
class SeriesIndex:
    root: Path
    series: dict[str, IndexedSeries]  # by SeriesInstanceUID
    unreadable: list[Path] = field(default_factory=list)  # DICOM files cut short or damaged
    files: int = 0  # all files looked at

    def of_modality(self, modality: str = "CT") -> dict[str, IndexedSeries]:
        return {uid: s for uid, s in self.series.items() if s.modality == modality}


def _files_under(root: Path) -> list[Path]:
    """Every file under ``root``, following links to folders once (a download may be assembled from links)."""
    seen, files = set(), []
    for folder, folders, names in os.walk(root, followlinks=True):
        stat = os.stat(folder)
        if (stat.st_dev, stat.st_ino) in seen:
            folders[:] = []
            continue
        seen.add((stat.st_dev, stat.st_ino))
        folders.sort()
        files.extend(Path(folder) / name for name in sorted(names))
    return [f for f in files if f.is_file()]


@quiet_pydicom()
def _read_headers(paths: list[Path]) -> list[tuple[str, dict | None]]:
    """(path, the INDEX_TAGS of an image object and its file key, or None for a damaged DICOM file); others
    left out."""
    rows = []
    for path in paths:
        try:
            with open(path, "rb") as file:
                header = pydicom.dcmread(file, stop_before_pixels=True, specific_tags=INDEX_TAGS)
                header_bytes = file.tell()  # where the pixel data begin
                file.seek(0)
                key = f"{hashlib.sha256(file.read(header_bytes)).hexdigest()}:{os.fstat(file.fileno()).st_size}"
        except pydicom.errors.InvalidDicomError:
            continue  # not DICOM at all
        except Exception:  # a DICOM file cut short or damaged
            rows.append((str(path), None))
            continue
        if str(header.get("SOPClassUID", "") or "").strip() == DICOMDIR_SOP_CLASS or is_non_image(header):
            continue
        if "SeriesInstanceUID" not in header:
            rows.append((str(path), None))
            continue
        rows.append((str(path), {"series": str(header.SeriesInstanceUID), "modality": modality_of(header),
                                 "patient": str(header.get("PatientID", "")),
                                 "study": str(header.get("StudyInstanceUID", "")), "key": key}))
    return rows


def check_download_root(root) -> Path:
    """``root`` as a Path if it is a folder; XAIExplainError otherwise."""
    root = Path(root)
    if not root.is_dir():
        raise XAIExplainError(f"{root} is not a folder; give the folder of a LIDC-IDRI download")
    return root


def index_series(root, workers: int = 1, progress: bool = False) -> SeriesIndex:
    """The image series under ``root`` by SeriesInstanceUID, reading the headers in ``workers`` processes."""
    root = check_download_root(root)
    files = _files_under(root)
    chunks = [files[n:n + FILES_PER_TASK] for n in range(0, len(files), FILES_PER_TASK)]
    members = defaultdict(list)
    unreadable = []
    for rows in map_in_workers(_read_headers, chunks, workers, f"DICOM headers ({FILES_PER_TASK} files)", progress,
                               unit="part"):
        for path, header in rows:
            if header is None:
                unreadable.append(Path(path))
            else:
                members[header["series"]].append((Path(path), header))
    series = {}
    for uid, entries in sorted(members.items()):
        entries.sort(key=lambda entry: entry[0])
        first = entries[0][1]
        series[uid] = IndexedSeries(series_instance_uid=uid, patient_id=first["patient"],
                                    study_instance_uid=first["study"], modality=first["modality"],
                                    files=[path for path, _ in entries], file_keys=[row["key"] for _, row in entries])
    return SeriesIndex(root=root, series=series, unreadable=sorted(unreadable), files=len(files))
