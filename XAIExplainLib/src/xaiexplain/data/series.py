"""Reading CT series robustly from DICOM folders (real LIDC-IDRI downloads, any CT, the phantom).

pydicom reads the headers (to group, choose and sort), SimpleITK reads the pixels of the
sorted files with their world geometry. Real LIDC series vary, so the reader sorts slices by their
position along the slice normal (never by file name), keeps the lower InstanceNumber of two slices at
one position (as pylidc does), applies each slice's own rescale slope and intercept, and puts series
with irregular slice steps on a uniform grid at the median step. A step longer than GAP_FACTOR times the
median is a gap (missing slices): refused unless allowed, then interpolated across and recorded. Objects
that are not images (SEG, SR, presentation states, RT structure sets, ...) are ignored when choosing the
series. Every message of SeriesError is one line: header text and file names are escaped and shortened.

One check of the slices' headers (``check_slices``: CT, geometry present and finite, single frames, one
orientation, size and pixel spacing, origins along the slice normal) and of their values
(``slice_values.check_ct_numbers``: plausible Hounsfield units) serves ``explain`` and ``dataset`` alike, with the same
sentences, before anything is written.
"""
from __future__ import annotations

import contextlib
import math
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import pydicom.uid
import SimpleITK as sitk
from pydicom.multival import MultiValue

from xaiexplain.data.geometry import uniform_slice_positions
from xaiexplain.data.slice_values import SeriesError, check_ct_numbers, read_plane, shown_path, shown_text

# Relative tolerance for "the same slice step".
STEP_TOLERANCE = 0.01
# A step between neighbouring slices longer than this times the median step is a gap (missing slices).
GAP_FACTOR = 1.5
# Bounds of the messages: series and gaps listed.
LISTED_SERIES = 5
LISTED_GAPS = 3

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
# Objects that may lie beside the CT slices but are not images: known by Modality or by SOP Class.
NON_IMAGE_MODALITIES = frozenset({"SEG", "SR", "PR", "KO", "REG", "FID", "RWV", "DOC", "PLAN", "RTSTRUCT",
                                  "RTPLAN", "RTDOSE", "RTRECORD", "RTINTENT", "RTRAD", "RTSEGANN"})
_NON_IMAGE_SOP_SUFFIXES = ("SRStorage", "PresentationStateStorage", "SegmentationStorage", "RegistrationStorage",
                           "RecordStorage", "InstructionStorage")
_NON_IMAGE_SOP_NAMES = {"KeyObjectSelectionDocumentStorage", "RTStructureSetStorage", "RTPlanStorage",
                        "RTIonPlanStorage", "RTDoseStorage", "RTSegmentAnnotationStorage", "SpatialFiducialsStorage",
                        "EncapsulatedPDFStorage", "EncapsulatedCDAStorage", "RawDataStorage",
                        "RealWorldValueMappingStorage"}
NON_IMAGE_SOP_CLASSES = frozenset(
    str(value) for name, value in vars(pydicom.uid).items()
    if isinstance(value, pydicom.uid.UID) and (name.endswith(_NON_IMAGE_SOP_SUFFIXES) or name in _NON_IMAGE_SOP_NAMES))


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
    # Gaps (missing slices) read with allow_gaps=True: (position before, position after) along the normal, mm.
    gaps: list[tuple[float, float]] = field(default_factory=list)


def read_series(folder, series_instance_uid: str | None = None, allow_gaps: bool = False,
                allow_implausible_hu: bool = False) -> CTSeries:
    """Read the CT series in ``folder`` (searched recursively); ``series_instance_uid`` chooses one
    when the folder holds several. Objects that are not images (SEG, SR, ...) are ignored. A gap in the
    slices (a step longer than GAP_FACTOR times the median) raises SeriesError unless ``allow_gaps``, then
    it is interpolated across and listed in ``CTSeries.gaps``. Pixel values that are not plausible CT numbers
    (``check_ct_numbers``) raise ImplausibleCTNumbers unless ``allow_implausible_hu``. Raises SeriesError
    with one sentence for anything unreadable or that is not one volume (``check_slices``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SeriesError(f"{shown_path(folder)} is not a folder")
    headers, non_images = read_slice_headers(folder, sorted(p for p in folder.rglob("*") if p.is_file()))
    if not headers:
        if non_images:
            kinds = ", ".join(sorted({modality_of(header) or "?" for _, header in non_images}))
            raise SeriesError(f"{shown_path(folder)} holds no images, only {len(non_images)} DICOM objects that "
                              f"are not images ({shown_text(kinds)})")
        raise SeriesError(f"{shown_path(folder)} holds no DICOM files")
    by_series = defaultdict(list)
    for path, header in headers:
        by_series[str(header.get("SeriesInstanceUID", ""))].append((path, header))
    if series_instance_uid is not None:
        if series_instance_uid not in by_series:
            for _, header in non_images:
                if str(header.get("SeriesInstanceUID", "")) == series_instance_uid:
                    raise SeriesError(f"the series {shown_text(series_instance_uid, 64)} in {shown_path(folder)} is a "
                                      f"{shown_text(modality_of(header) or 'non-image')} object, not an image series")
            raise SeriesError(f"{shown_path(folder)} holds no series with SeriesInstanceUID "
                              f"{shown_text(series_instance_uid, 64)}; it holds {_describe(by_series)}")
        chosen = by_series[series_instance_uid]
    elif len(by_series) > 1:
        raise SeriesError(f"{shown_path(folder)} holds {len(by_series)} series, choose one with --series-uid: "
                          f"{_describe(by_series)}")
    else:
        chosen = next(iter(by_series.values()))
    return _read_one_series(folder, chosen, allow_gaps, allow_implausible_hu)


def modality_of(header) -> str:
    return str(header.get("Modality", "") or "").strip().upper()


def is_non_image(header) -> bool:
    """A DICOM object that is no image slice: a segmentation, a report, a presentation state, an RT plan..."""
    sop_class = str(header.get("SOPClassUID", "") or "").strip()
    return sop_class in NON_IMAGE_SOP_CLASSES or modality_of(header) in NON_IMAGE_MODALITIES


@contextlib.contextmanager
def quiet_pydicom():
    """pydicom warns of every invalid header value it meets, on stderr; the checks here say in one sentence
    what matters."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="pydicom")
        yield


@quiet_pydicom()
def read_slice_headers(folder, paths) -> tuple[list, list]:
    """(path, header) of the image files among ``paths`` (of the series folder ``folder``, named in messages)
    and, apart, of the DICOM objects that are not images; files that are not DICOM are left out."""
    folder = Path(folder)
    headers, non_images = [], []
    for path in map(Path, paths):
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except pydicom.errors.InvalidDicomError:
            continue  # not DICOM at all (README, NRRD, ...): not part of any series
        except Exception as error:  # a DICOM file cut short or damaged
            raise SeriesError(f"{shown_path(path)} in {shown_path(folder)} cannot be read as DICOM "
                              f"({type(error).__name__})") from None
        if str(header.get("SOPClassUID", "") or "").strip() == DICOMDIR_SOP_CLASS:
            continue
        if is_non_image(header):
            non_images.append((path, header))  # a SEG, SR, ... beside the slices: not part of the volume
            continue
        if "SeriesInstanceUID" not in header:  # pydicom reads a file cut short as far as it goes
            raise SeriesError(f"{shown_path(path)} in {shown_path(folder)} cannot be read whole: it is damaged "
                              "or cut short (it has no SeriesInstanceUID)")
        headers.append((path, header))
    return headers, non_images


def _describe(by_series) -> str:
    """The series of a folder in a few words each: the largest LISTED_SERIES, then how many more."""
    ordered = sorted(by_series.items(), key=lambda item: (-len(item[1]), item[0]))
    parts = []
    for uid, members in ordered[:LISTED_SERIES]:
        header = members[0][1]
        parts.append(f"{shown_text(uid, 64) if uid else '(no UID)'} ({shown_text(header.get('Modality', '?'), 16)}, "
                     f"{shown_text(header.get('PatientID', '?'))}, '{shown_text(header.get('SeriesDescription', ''))}', "
                     f"{len(members)} files)")
    if len(ordered) > LISTED_SERIES:
        parts.append(f"and {len(ordered) - LISTED_SERIES} more")
    return "; ".join(parts)


# Geometry attributes every slice needs, with their number of values.
GEOMETRY_TAGS = {"ImagePositionPatient": 3, "ImageOrientationPatient": 6, "PixelSpacing": 2}
# A slice's origin may lie this many pixels beside the line through the first slice's origin along the slice
# normal (rounding in the headers); farther (a gantry tilt, slices shifted in-plane) the slices are no one grid.
BESIDE_NORMAL_PIXELS = 0.1


@dataclass
class SliceStack:
    """The image slices of one series, checked to be one volume (``check_slices``) and sorted along the
    slice normal: one file per position, of two at one position the lower InstanceNumber (as pylidc keeps)."""

    folder: Path  # named in messages
    files: list[Path]
    headers: list
    positions: np.ndarray  # of the slices along the normal (mm), ascending
    orientation: np.ndarray  # ImageOrientationPatient: the row direction, then the column direction
    origin: np.ndarray  # ImagePositionPatient of the first slice
    rows: int
    columns: int
    pixel_spacing: tuple[float, float]  # (between rows, between columns) in mm, as PixelSpacing

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.orientation[:3], self.orientation[3:])

    def plane(self, n: int) -> np.ndarray:
        """Slice ``n``'s pixels in HU (its own rescale slope and intercept), float32 (rows, columns)."""
        return read_plane(self.folder, self.files[n], self.rows, self.columns)


@quiet_pydicom()
def check_slices(folder, members: list) -> SliceStack:
    """The slices ``members`` ((path, header) of one series' image files, from ``read_slice_headers``) as one
    volume, sorted along the slice normal; SeriesError with one sentence naming the file for anything that
    makes them none: a modality other than CT, a header value that is missing, not a number or not finite,
    a multi-frame image, slices of other orientations, sizes or pixel spacings, origins off the slice normal
    (a gantry tilt), fewer than two positions. ``explain`` (``read_series``) and ``dataset`` both check here."""
    folder = Path(folder)
    first = members[0][1]
    modality = modality_of(first)
    if modality != "CT":
        raise SeriesError(f"{shown_path(folder)} holds a {shown_text(modality) or 'modality-less'} series, not CT")
    slices = [_checked_slice(folder, path, header) for path, header in members]
    reference = slices[0]
    for checked in slices:
        differing = next((what for what, tag, close in (
            ("modalities", "Modality", lambda a, b: a == b),
            ("slice orientations", "ImageOrientationPatient", lambda a, b: np.allclose(a, b, atol=1e-4)),
            ("slice sizes", "size", lambda a, b: a == b),
            ("pixel spacings", "PixelSpacing", lambda a, b: np.allclose(a, b, rtol=1e-4)))
            if not close(checked[tag], reference[tag])), None)
        if differing:
            raise SeriesError(f"{shown_path(folder)} mixes {differing} ({shown_path(checked['path'])} differs "
                              f"from {shown_path(reference['path'])}), which is not one volume")
    orientation = reference["ImageOrientationPatient"]
    normal = np.cross(orientation[:3], orientation[3:])
    # Sort by position; of two slices at one position keep the lower InstanceNumber, as pylidc does.
    slices.sort(key=lambda checked: (round(float(np.dot(checked["ImagePositionPatient"], normal)), 3),
                                     checked["InstanceNumber"]))
    unique = []
    for checked in slices:
        position = float(np.dot(checked["ImagePositionPatient"], normal))
        if unique and abs(position - unique[-1][0]) < 1e-3:
            continue
        unique.append((position, checked))
    if len(unique) < 2:
        raise SeriesError(f"{shown_path(folder)} holds a single slice position, not a volume")
    origin = unique[0][1]["ImagePositionPatient"]
    pixel_spacing = tuple(float(v) for v in reference["PixelSpacing"])
    for _, checked in unique:
        offset = checked["ImagePositionPatient"] - origin
        beside = float(np.linalg.norm(offset - np.dot(offset, normal) * normal))
        if beside > BESIDE_NORMAL_PIXELS * min(pixel_spacing):
            raise SeriesError(f"the slices of {shown_path(folder)} do not lie along their normal: "
                              f"{shown_path(checked['path'])} lies {beside:.3g} mm beside the line through the "
                              "first slice (a gantry tilt, or slices shifted in their plane), so they are no one grid")
    return SliceStack(folder=folder, files=[checked["path"] for _, checked in unique],
                      headers=[checked["header"] for _, checked in unique],
                      positions=np.array([position for position, _ in unique]), orientation=orientation,
                      origin=origin, rows=reference["size"][0], columns=reference["size"][1],
                      pixel_spacing=pixel_spacing)


def _checked_slice(folder: Path, path: Path, header) -> dict:
    """One slice's modality, InstanceNumber, size (rows, columns), position, orientation and pixel spacing,
    checked: SeriesError naming the file for any that is missing, of the wrong length, not a number, not
    finite or degenerate, and for a multi-frame image."""
    where = f"{shown_path(path)} in {shown_path(folder)}"
    missing = [tag for tag in (*GEOMETRY_TAGS, "Rows", "Columns") if header.get(tag) in (None, "")]
    if missing:
        raise SeriesError(f"{where} lacks {', '.join(missing)}, so the series has no geometry")
    frames = _whole_number(where, header, "NumberOfFrames", 1)
    if frames != 1:
        raise SeriesError(f"{where} is a multi-frame image ({frames} frames), not one slice of a series")
    values = {"path": path, "header": header, "Modality": modality_of(header),
              "InstanceNumber": _whole_number(where, header, "InstanceNumber", 0),
              "size": (_whole_number(where, header, "Rows", 0), _whole_number(where, header, "Columns", 0))}
    if min(values["size"]) < 1:
        raise SeriesError(f"{where} holds a slice of {values['size'][0]} x {values['size'][1]} pixels, so the "
                          "series has no image")
    for tag, count in GEOMETRY_TAGS.items():
        try:
            raw = header[tag].value
            raw = list(raw) if isinstance(raw, (MultiValue, list, tuple)) else [raw]
            array = np.array([float(v) for v in raw], dtype=float)
        except (TypeError, ValueError):
            raise SeriesError(f"{where} holds {tag} values that are not numbers, so the series has no geometry") \
                from None
        if len(array) != count:
            raise SeriesError(f"{where} holds {len(array)} values of {tag} where {count} belong, so the series has "
                              "no geometry")
        if not np.all(np.isfinite(array)):
            shown = ", ".join(str(v) for v in array)
            raise SeriesError(f"{where} holds a non-finite {tag} ({shown}), so the series has no geometry")
        values[tag] = array
    if np.any(values["PixelSpacing"] <= 0):
        raise SeriesError(f"{where} holds a PixelSpacing that is not positive, so the series has no geometry")
    orientation = values["ImageOrientationPatient"]
    if np.linalg.norm(np.cross(orientation[:3], orientation[3:])) < 0.5:
        raise SeriesError(f"{where} holds an ImageOrientationPatient whose row and column directions are not "
                          "perpendicular unit vectors")
    return values


def _whole_number(where: str, header, tag: str, default: int) -> int:
    """An integer attribute of a header (``default`` where it is absent or empty); SeriesError otherwise."""
    value = None
    try:
        value = header.get(tag)  # pydicom may be set to refuse an invalid value as it reads it
        value = getattr(value, "value", value)
        if value in (None, ""):
            return default
        number = float(value)
    except (TypeError, ValueError):
        value, number = "?" if value is None else value, math.nan
    if not (math.isfinite(number) and number == int(number)):
        raise SeriesError(f"{where} holds {tag} {shown_text(value)}, which is not a whole number")
    return int(number)


def _gaps(slice_z: np.ndarray) -> list[tuple[float, float]]:
    """(before, after) of each step longer than GAP_FACTOR times the median step: missing slices."""
    steps = np.diff(slice_z)
    median_step = float(np.median(steps))
    return [(float(slice_z[n]), float(slice_z[n + 1])) for n in np.flatnonzero(steps > GAP_FACTOR * median_step)]


def _gap_sentence(folder: Path, gaps: list, median_step: float) -> str:
    where = [f"between z {round(before, 2)} and {round(after, 2)} mm" for before, after in gaps[:LISTED_GAPS]]
    if len(gaps) > LISTED_GAPS:
        where.append(f"and {len(gaps) - LISTED_GAPS} more")
    count = "a gap" if len(gaps) == 1 else f"{len(gaps)} gaps"
    return (f"{shown_path(folder)} has {count} in its slices ({', '.join(where)}; the usual step is "
            f"{round(median_step, 3)} mm): pass --allow-gaps (allow_gaps=True in Python) to explain it on "
            "interpolated slices")


def _read_one_series(folder: Path, members: list, allow_gaps: bool = False,
                     allow_implausible_hu: bool = False) -> CTSeries:
    stack = check_slices(folder, members)
    slice_z = stack.positions
    steps = np.diff(slice_z)
    median_step = float(np.median(steps))
    gaps = _gaps(slice_z)
    if gaps and not allow_gaps:
        raise SeriesError(_gap_sentence(folder, gaps, median_step))
    image = _read_pixels(stack)
    check_ct_numbers(folder, sitk.GetArrayViewFromImage(image), allow_implausible_hu)
    irregular = bool(np.any(np.abs(steps - median_step) > STEP_TOLERANCE * median_step))
    if irregular:
        image = _resample_to_uniform_positions(image, slice_z)
    first = stack.headers[0]
    return CTSeries(image=image, patient_id=str(first.get("PatientID", "")),
                    study_instance_uid=str(first.get("StudyInstanceUID", "")),
                    series_instance_uid=str(first.get("SeriesInstanceUID", "")), slice_z=slice_z, files=stack.files,
                    resampled_z=irregular, gaps=gaps)


def _read_pixels(stack: SliceStack) -> sitk.Image:
    """Pixels of the sorted slices in HU (each slice's own rescale), with the series' world geometry."""
    volume = sitk.GetImageFromArray(np.stack([stack.plane(n) for n in range(len(stack.files))]))
    step = float(stack.positions[-1] - stack.positions[0]) / (len(stack.files) - 1)  # > 0: sorted along the normal
    row_spacing, column_spacing = stack.pixel_spacing
    volume.SetOrigin(stack.origin.tolist())
    volume.SetSpacing((column_spacing, row_spacing, step))
    volume.SetDirection(np.column_stack([stack.orientation[:3], stack.orientation[3:], stack.normal]).ravel().tolist())
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

