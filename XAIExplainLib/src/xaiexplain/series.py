"""CT series on disk: writing TCIA-style DICOM (the phantom) and reading real series robustly.

Reading: pydicom reads the headers (to group, choose and sort), SimpleITK reads the pixels of the
sorted files with their world geometry. Real LIDC series vary, so the reader sorts slices by their
position along the slice normal (never by file name), keeps the lower InstanceNumber of two slices at
one position (as pylidc does), applies each slice's own rescale slope and intercept, and puts series
with irregular slice steps on a uniform grid at the median step.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from . import __version__
from .errors import XAIExplainError
from .files import atomic_path
from .geometry import ScanGeometry, uniform_slice_positions

HU_OFFSET = 1024  # stored value = HU + 1024, RescaleIntercept -1024
# Relative tolerance for "the same slice step".
STEP_TOLERANCE = 0.01


class SeriesError(XAIExplainError):
    """A series that cannot be read; the message is one sentence naming the folder and the cause."""


@dataclass
class CTSeries:
    """A CT series read from disk. ``image`` is float32 Hounsfield units with the DICOM's LPS geometry."""

    image: sitk.Image
    patient_id: str
    study_instance_uid: str
    series_instance_uid: str
    slice_z: np.ndarray  # positions of the slices along the slice normal, sorted, as read
    files: list[Path]  # in slice order, one per slice position
    resampled_z: bool  # True when irregular slice steps were put on a uniform grid


# -- writing --------------------------------------------------------------------------------------------

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
    with atomic_path(folder) as temporary:
        temporary.mkdir(parents=True)
        for k, z in enumerate(geometry.slice_z):
            dataset = _slice_dataset(geometry, k, z, frame_of_reference)
            dataset.PixelData = np.ascontiguousarray(stored[k]).tobytes()
            dataset.save_as(temporary / f"{k + 1:06d}.dcm", enforce_file_format=True)
    return folder


def _slice_dataset(geometry: ScanGeometry, k: int, z: float, frame_of_reference: str) -> FileDataset:
    sop_instance_uid = _derived_uid(geometry.series_instance_uid, k)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_instance_uid
    ds.Modality = "CT"
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.Manufacturer = "XAIExplain phantom"
    ds.ManufacturerModelName = f"xaiexplain {__version__}"
    ds.SeriesDescription = "XAIExplain phantom rendered from the LIDC-IDRI annotations"
    ds.PatientID = geometry.patient_id
    ds.PatientName = geometry.patient_id
    ds.StudyInstanceUID = geometry.study_instance_uid
    ds.SeriesInstanceUID = geometry.series_instance_uid
    ds.FrameOfReferenceUID = frame_of_reference
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = k + 1
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


# -- reading --------------------------------------------------------------------------------------------

def read_series(folder, series_instance_uid: str | None = None) -> CTSeries:
    """Read the CT series in ``folder`` (searched recursively); ``series_instance_uid`` chooses one
    when the folder holds several. Raises SeriesError with one sentence for anything unreadable."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SeriesError(f"{folder} is not a folder")
    headers = _dicom_headers(folder)
    if not headers:
        raise SeriesError(f"{folder} holds no DICOM files")
    by_series = defaultdict(list)
    for path, header in headers:
        by_series[str(header.get("SeriesInstanceUID", ""))].append((path, header))
    if series_instance_uid is not None:
        if series_instance_uid not in by_series:
            raise SeriesError(f"{folder} holds no series with SeriesInstanceUID {series_instance_uid}; "
                              f"it holds {_describe(by_series)}")
        chosen = by_series[series_instance_uid]
    elif len(by_series) > 1:
        raise SeriesError(f"{folder} holds {len(by_series)} series, choose one with --series-uid: "
                          f"{_describe(by_series)}")
    else:
        chosen = next(iter(by_series.values()))
    return _read_one_series(folder, chosen)


def _dicom_headers(folder: Path) -> list:
    headers = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except pydicom.errors.InvalidDicomError:
            continue  # not DICOM at all (README, NRRD, ...): not part of any series
        except Exception as error:  # a DICOM file cut short or damaged
            raise SeriesError(f"{path} in {folder} cannot be read as DICOM ({type(error).__name__})") from None
        if "SOPClassUID" in header and str(header.SOPClassUID) == "1.2.840.10008.1.3.10":
            continue  # DICOMDIR
        if "SeriesInstanceUID" not in header:  # pydicom reads a file cut short as far as it goes
            raise SeriesError(f"{path} in {folder} cannot be read whole: it is damaged or cut short "
                              "(it has no SeriesInstanceUID)")
        headers.append((path, header))
    return headers


def _describe(by_series) -> str:
    parts = []
    for uid, members in sorted(by_series.items()):
        header = members[0][1]
        parts.append(f"{uid or '(no UID)'} ({header.get('Modality', '?')}, {header.get('PatientID', '?')}, "
                     f"'{header.get('SeriesDescription', '')}', {len(members)} files)")
    return "; ".join(parts)


def _read_one_series(folder: Path, members: list) -> CTSeries:
    first = members[0][1]
    modality = str(first.get("Modality", "")).upper()
    if modality != "CT":
        raise SeriesError(f"{folder} holds a {modality or 'modality-less'} series, not CT")
    for path, header in members:
        missing = [tag for tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows")
                   if tag not in header]
        if missing:
            raise SeriesError(f"{path} in {folder} lacks {', '.join(missing)}, so the series has no geometry")
    orientation = np.asarray(first.ImageOrientationPatient, float)
    normal = np.cross(orientation[:3], orientation[3:])
    positions = []
    for path, header in members:
        if not np.allclose(np.asarray(header.ImageOrientationPatient, float), orientation, atol=1e-4):
            raise SeriesError(f"{folder} mixes slice orientations, which is not one volume")
        position = float(np.dot(np.asarray(header.ImagePositionPatient, float), normal))
        positions.append((position, int(header.get("InstanceNumber", 0) or 0), path, header))
    # Sort by position; of two slices at one position keep the lower InstanceNumber, as pylidc does.
    positions.sort(key=lambda item: (round(item[0], 3), item[1]))
    unique = []
    for item in positions:
        if unique and abs(item[0] - unique[-1][0]) < 1e-3:
            continue
        unique.append(item)
    if len(unique) < 2:
        raise SeriesError(f"{folder} holds a single slice position, not a volume")

    slice_z = np.array([item[0] for item in unique])
    files = [item[2] for item in unique]
    image = _read_pixels(folder, files, [item[3] for item in unique])
    steps = np.diff(slice_z)
    median_step = float(np.median(steps))
    irregular = bool(np.any(np.abs(steps - median_step) > STEP_TOLERANCE * median_step))
    if irregular:
        image = _resample_to_uniform_positions(image, slice_z)
    return CTSeries(image=image, patient_id=str(first.get("PatientID", "")),
                    study_instance_uid=str(first.get("StudyInstanceUID", "")),
                    series_instance_uid=str(first.get("SeriesInstanceUID", "")), slice_z=slice_z, files=files,
                    resampled_z=irregular)


def _read_pixels(folder: Path, files: list[Path], headers: list) -> sitk.Image:
    """Pixels of the sorted files in HU (each slice's own rescale), with the series' world geometry."""
    planes = []
    for path in files:
        try:
            plane = sitk.ReadImage(str(path), sitk.sitkFloat32)  # GDCM applies this file's slope / intercept
        except RuntimeError:
            raise SeriesError(f"the pixel data of {path} in {folder} cannot be decoded") from None
        if plane.GetSize()[:2] != (int(headers[0].Columns), int(headers[0].Rows)):
            raise SeriesError(f"{folder} mixes slice sizes, which is not one volume")
        planes.append(sitk.GetArrayViewFromImage(plane).reshape(plane.GetSize()[1], plane.GetSize()[0]).copy())
    volume = sitk.GetImageFromArray(np.stack(planes))
    first = headers[0]
    orientation = np.asarray(first.ImageOrientationPatient, float)
    row_direction, column_direction = orientation[:3], orientation[3:]
    normal = np.cross(row_direction, column_direction)
    origin = np.asarray(first.ImagePositionPatient, float)
    last = np.asarray(headers[-1].ImagePositionPatient, float)
    step = float(np.dot(last - origin, normal)) / (len(files) - 1)  # > 0: the files are sorted along the normal
    pixel_spacing = [float(v) for v in first.PixelSpacing]  # (row spacing, column spacing)
    volume.SetOrigin(origin.tolist())
    volume.SetSpacing((pixel_spacing[1], pixel_spacing[0], abs(step)))
    volume.SetDirection(np.column_stack([row_direction, column_direction, normal]).ravel().tolist())
    return volume


def _resample_to_uniform_positions(image: sitk.Image, slice_z: np.ndarray) -> sitk.Image:
    """Slices at irregular positions along the normal -> the uniform grid at the median step (linear)."""
    array = sitk.GetArrayFromImage(image)
    target = uniform_slice_positions(slice_z)
    upper = np.clip(np.searchsorted(slice_z, target, side="right"), 1, len(slice_z) - 1)
    lower = upper - 1
    weight = ((target - slice_z[lower]) / (slice_z[upper] - slice_z[lower])).astype(np.float32)[:, None, None]
    resampled = sitk.GetImageFromArray((1 - weight) * array[lower] + weight * array[upper])
    resampled.SetOrigin(image.GetOrigin())
    resampled.SetDirection(image.GetDirection())
    resampled.SetSpacing(image.GetSpacing()[:2] + (float(target[1] - target[0]),))
    return resampled

