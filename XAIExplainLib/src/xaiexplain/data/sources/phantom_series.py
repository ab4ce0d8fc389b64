"""A phantom scan as files: the TCIA-style DICOM series and its ground truth.

Layout under ``root``:
- ``<PatientID>/<StudyInstanceUID>/<SeriesInstanceUID>/*.dcm``: the series, with the scan's real UIDs;
- ``ground_truth/<PatientID>/<SeriesInstanceUID>/``: ``nodules.nrrd`` (uint16, nodule_index + 1),
  ``spicules.nrrd`` and ``calcification.nrrd`` (uint8 masks), all on the grid the series reads back to,
  and ``truth.json`` (geometry, each nodule's LIDC record, LPS centroid, label and label value).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from xaiexplain.data import lidc
from xaiexplain.data.sources import phantom
from xaiexplain.errors import XAIExplainError
from xaiexplain.io import dicom
from xaiexplain.io.files import output_set, safe_name


@dataclass
class WrittenSeries:
    series_folder: Path
    truth_folder: Path
    slices: int
    nodules: int


def truth_folder(root, patient_id: str, series_instance_uid: str) -> Path:
    return Path(root) / "ground_truth" / safe_name(patient_id) / safe_name(series_instance_uid)


def check_phantom_root(root) -> None:
    """Refuse a folder that holds DICOM the phantom did not write, such as a LIDC-IDRI download tree: the
    phantom writes the scans' real UIDs and must never mix synthetic series into, or replace, real ones."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise XAIExplainError(f"{root} exists and is not a folder; give a folder for the phantom series")
    for folder, _, names in os.walk(root):
        for name in sorted(names):
            path = Path(folder) / name
            try:
                with open(path, "rb") as f:
                    looks_like_dicom = f.read(132)[128:132] == b"DICM"
            except OSError:
                continue
            if looks_like_dicom:
                if not dicom.is_phantom_file(path):
                    raise XAIExplainError(f"{root} holds DICOM that the phantom did not write ({path}); a phantom "
                                          "is never written into a download tree: choose a new --out folder")
                break  # one file tells for its folder: the phantom writes whole series folders


def write_phantom_series(scan, root, seed: int = 0) -> WrittenSeries:
    """Render the phantom of a pylidc Scan and write its DICOM series and ground truth under ``root``.
    An existing series folder of the same UID is refused unless the phantom wrote it."""
    geometry = lidc.scan_geometry(scan)
    target = dicom.series_folder(root, geometry)
    if target.is_dir():
        check_phantom_root(target)
    nodules = lidc.scan_nodules(scan, with_masks=True, geometry=geometry)
    volume = phantom.render_scan(geometry, nodules, seed=seed)
    truth = truth_folder(root, geometry.patient_id, geometry.series_instance_uid)
    with output_set(truth, "truth.json") as written:
        for name, array in (("nodules", volume.nodule_labels.astype(np.uint16)),
                            ("spicules", volume.spicules.astype(np.uint8)),
                            ("calcification", volume.calcification.astype(np.uint8))):
            sitk.WriteImage(geometry.to_image(array), str(written.path(f"{name}.nrrd")), useCompression=True)
        written.manifest_data = {
            "seed": seed,
            "geometry": geometry.to_json(),
            "nodules": [{**n.to_json(), "label_value": n.nodule_index + 1,
                         "voxels": int((volume.nodule_labels == n.nodule_index + 1).sum())} for n in nodules],
        }
        series_folder = dicom.write_dicom_series(volume.hu, geometry, root)
    return WrittenSeries(series_folder=series_folder, truth_folder=truth, slices=geometry.shape[0],
                         nodules=len(nodules))
