"""The finishing step of the DICOM objects that dcmqi writes (``io.dicom_outputs``), in pydicom 2.4 (Slicer 5.10's)
or 3.x alike: the object's identity (deterministic UIDs, equipment, content and series texts, one creation time
for the whole output set), the references of frames that lie between source slices, and what dcmqi 1.5.7
writes for an MR parametric map that does not hold for one derived from CT (Modality, the dimension's functional
group, a real world value range of 0 to 2). Texts are set here, never passed through dcmqi, so that non-ASCII
text (a model's path) is encoded by its declared character set."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import generate_uid

from xaiexplain import __version__
from xaiexplain.data.series import quiet_pydicom

_PYDICOM_3 = int(pydicom.__version__.split(".")[0]) >= 3
# The implementation that wrote the files last (pydicom's own identity would differ between 2.4 and 3.x).
IMPLEMENTATION_CLASS_UID = generate_uid(entropy_srcs=["xaiexplain", "implementation class"])
IMPLEMENTATION_VERSION_NAME = f"XAIEXPLAIN_{__version__}"[:16]
MANUFACTURER = "XAIExplain"
SOURCE_IMAGE_PURPOSE = ("121322", "DCM", "Source image for image processing operation")
IMAGE_POSITION, PLANE_POSITION_SEQUENCE = Tag(0x0020, 0x0032), Tag(0x0020, 0x9113)
# dcmqi's Clinical Trial Series attributes, left empty where the source has none: an incomplete module
_TRIAL_SERIES = ("ClinicalTrialCoordinatingCenterName", "ClinicalTrialSeriesID", "ClinicalTrialTimePointID")


def code_item(code: dict) -> Dataset:
    """A code sequence item from dcmqi's JSON form of a code."""
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = (
        code["CodeValue"], code["CodingSchemeDesignator"], code["CodeMeaning"])
    return item


@dataclass
class Finish:
    """What one object is given: ``uid_parts`` make its UIDs (the same parts, the same UIDs on every run);
    ``derivation`` is the code (dcmqi's JSON form) and ``derivation_description`` the text of each frame's
    derivation; ``adjust(dataset)`` does what only this kind of object needs."""

    uid_parts: tuple[str, ...]
    created: datetime
    series_description: str
    content_label: str
    content_description: str
    derivation: dict
    derivation_description: str | None = None
    software_versions: tuple[str, ...] = ()
    adjust: Callable[[Dataset], None] | None = None
    texts: list[str] = field(default_factory=list)  # every text set, to choose the character set


def finish_object(raw: Path, target: Path, source, finish: Finish) -> None:
    """Read dcmqi's object at ``raw``, finish it (see the module) and write it to ``target``."""
    with quiet_pydicom():
        dataset = pydicom.dcmread(raw)
    _set_identity(dataset, source, finish)
    _reference_frames_between_slices(dataset, source, finish)
    _reference_series(dataset, source)
    if finish.adjust is not None:
        finish.adjust(dataset)
    if any(not text.isascii() for text in finish.texts):
        dataset.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: pydicom encodes every text (the copied names too) in it
    dataset.file_meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    dataset.file_meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    if _PYDICOM_3:
        dataset.save_as(target, enforce_file_format=True)
    else:
        dataset.save_as(target, write_like_original=False)


def set_text(dataset: Dataset, keyword: str, text: str, finish: Finish, limit: int = 64) -> None:
    """Set a text attribute, cut to its VR's length, and note it for the character set."""
    text = text[:limit]
    setattr(dataset, keyword, text)
    finish.texts.append(text)


def _set_identity(dataset: Dataset, source, finish: Finish) -> None:
    def uid(role: str) -> str:
        return generate_uid(entropy_srcs=[*finish.uid_parts, role])

    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = uid("instance")
    dataset.SeriesInstanceUID = uid("series")
    dataset.FrameOfReferenceUID = source.frame_of_reference_uid  # the first slice's, whichever dcmqi took
    for item in (*dataset.get("DimensionOrganizationSequence", []), *dataset.get("DimensionIndexSequence", [])):
        if "DimensionOrganizationUID" in item:
            item.DimensionOrganizationUID = uid("dimension organization")
    dataset.Manufacturer = MANUFACTURER
    dataset.ManufacturerModelName = "xaiexplain"
    dataset.SoftwareVersions = list(finish.software_versions)
    dataset.ContentCreatorName = MANUFACTURER
    dataset.ContentLabel = finish.content_label
    set_text(dataset, "ContentDescription", finish.content_description, finish)
    set_text(dataset, "SeriesDescription", finish.series_description, finish)
    date, time = finish.created.strftime("%Y%m%d"), finish.created.strftime("%H%M%S")
    dataset.SeriesDate = dataset.ContentDate = dataset.InstanceCreationDate = date
    dataset.SeriesTime = dataset.ContentTime = dataset.InstanceCreationTime = time
    for keyword in _TRIAL_SERIES:
        if keyword in dataset and not str(dataset.get(keyword) or "").strip():
            delattr(dataset, keyword)


def _reference_frames_between_slices(dataset: Dataset, source, finish: Finish) -> None:
    """Each frame's derivation: dcmqi references the source slice at the frame's position; a frame that lies
    between source slices (a series put on a uniform grid, interpolated across a gap) it leaves without one.
    Such a frame is derived from the two slices it was interpolated from, and references both."""
    orientation = np.array(dataset.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0]
                           .ImageOrientationPatient, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    for frame in dataset.PerFrameFunctionalGroupsSequence:
        derivations = frame.get("DerivationImageSequence") or []
        if not derivations or not derivations[0].get("SourceImageSequence"):
            position = float(np.dot(np.array(frame.PlanePositionSequence[0].ImagePositionPatient, float), normal))
            frame.DerivationImageSequence = [_derivation(source, _slices_about(source.positions, position), finish)]
        elif finish.derivation_description is not None:
            for item in frame.DerivationImageSequence:
                set_text(item, "DerivationDescription", finish.derivation_description, finish, limit=1024)


def _reference_series(dataset: Dataset, source) -> None:
    """The source series and the instances the object references: those dcmqi lists (all, for an object on the
    series' whole grid) and every one a frame is derived from (dcmqi lists none for a part of the grid, such as
    the counterfactuals' box), in slice order."""
    listed = {str(item.ReferencedSOPInstanceUID) for series in dataset.get("ReferencedSeriesSequence", [])
              for item in series.get("ReferencedInstanceSequence", [])}
    listed |= {str(reference.ReferencedSOPInstanceUID) for frame in dataset.PerFrameFunctionalGroupsSequence
               for item in frame.get("DerivationImageSequence", [])
               for reference in item.get("SourceImageSequence", [])}
    series = Dataset()
    series.SeriesInstanceUID = source.series_instance_uid
    series.ReferencedInstanceSequence = []
    for sop_class, sop_instance in zip(source.sop_class_uids, source.sop_instance_uids):
        if sop_instance in listed:
            instance = Dataset()
            instance.ReferencedSOPClassUID, instance.ReferencedSOPInstanceUID = sop_class, sop_instance
            series.ReferencedInstanceSequence.append(instance)
    dataset.ReferencedSeriesSequence = [series]


def _slices_about(positions: np.ndarray, position: float) -> list[int]:
    """The source slice at ``position`` (along the normal), or the two it lies between."""
    nearest = int(np.argmin(np.abs(positions - position)))
    if abs(positions[nearest] - position) < 1e-3:
        return [nearest]
    above = int(np.clip(np.searchsorted(positions, position), 1, len(positions) - 1))
    return [above - 1, above]


def _derivation(source, slices: list[int], finish: Finish) -> Dataset:
    item = Dataset()
    item.DerivationCodeSequence = [code_item(finish.derivation)]
    between = ("; this frame lies between two source slices, from which the series was interpolated"
               if len(slices) == 2 else "")
    if finish.derivation_description is not None or between:
        set_text(item, "DerivationDescription", (finish.derivation_description or "")[:900] + between, finish,
                 limit=1024)
    item.SourceImageSequence = [source_reference(source, k) for k in slices]
    return item


def source_reference(source, k: int) -> Dataset:
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.sop_class_uids[k]
    reference.ReferencedSOPInstanceUID = source.sop_instance_uids[k]
    value, scheme, meaning = SOURCE_IMAGE_PURPOSE
    reference.PurposeOfReferenceCodeSequence = [code_item(
        {"CodeValue": value, "CodingSchemeDesignator": scheme, "CodeMeaning": meaning})]
    return reference


def parametric_map_adjustment(modality: str, value_range: tuple[float, float], lut_label: str,
                              lut_explanation: str, finish: Finish) -> Callable[[Dataset], None]:
    """What a parametric map of CT needs beyond dcmqi 1.5.7's: the source's Modality (dcmqi writes MR), no pixel
    padding (dcmqi copies the CT's), the frame position's functional group as the dimension's (dcmqi names the
    real world value mapping), and a real world value mapping over the float values' range with its label and
    explanation (dcmqi writes 0 to 2 as US)."""
    def adjust(dataset: Dataset) -> None:
        dataset.Modality = modality
        for keyword in ("PixelPaddingValue", "PixelPaddingRangeLimit"):  # the CT's, copied: no float image has them
            if keyword in dataset:
                delattr(dataset, keyword)
        for item in dataset.DimensionIndexSequence:
            if Tag(item.DimensionIndexPointer) == IMAGE_POSITION:
                item.FunctionalGroupPointer = PLANE_POSITION_SEQUENCE
        for mapping in dataset.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence:
            for keyword in ("RealWorldValueFirstValueMapped", "RealWorldValueLastValueMapped"):
                if keyword in mapping:
                    delattr(mapping, keyword)
            mapping.DoubleFloatRealWorldValueFirstValueMapped = float(value_range[0])
            mapping.DoubleFloatRealWorldValueLastValueMapped = float(value_range[1])
            set_text(mapping, "LUTLabel", lut_label, finish, limit=16)
            set_text(mapping, "LUTExplanation", lut_explanation, finish)

    return adjust


def segmentation_adjustment(segments: dict[str, dict], algorithm: dict, private_scheme: str,
                            finish: Finish) -> Callable[[Dataset], None]:
    """Each segment's label, description and algorithm identification, and the coding scheme of our own codes
    (``private_scheme``) identified; ``segments``: by the label dcmqi gave the segment (its side's name),
    ``{"label": ..., "description": ...}``; ``algorithm``: ``family`` (a code), ``name``, ``version``, ``source``
    and ``parameters`` of the Algorithm Identification macro."""
    def adjust(dataset: Dataset) -> None:
        scheme = Dataset()
        scheme.CodingSchemeDesignator = private_scheme
        scheme.CodingSchemeName = "XAIExplain explanation regions"
        scheme.CodingSchemeResponsibleOrganization = MANUFACTURER
        dataset.CodingSchemeIdentificationSequence = [scheme]
        for segment in dataset.SegmentSequence:
            side = segments[str(segment.SegmentLabel)]
            set_text(segment, "SegmentLabel", side["label"], finish)
            set_text(segment, "SegmentDescription", side["description"], finish, limit=1024)
            identification = Dataset()
            identification.AlgorithmFamilyCodeSequence = [code_item(algorithm["family"])]
            set_text(identification, "AlgorithmName", algorithm["name"], finish)
            set_text(identification, "AlgorithmVersion", algorithm["version"], finish)
            set_text(identification, "AlgorithmSource", algorithm["source"], finish)
            set_text(identification, "AlgorithmParameters", algorithm["parameters"], finish, limit=10240)
            segment.SegmentationAlgorithmIdentificationSequence = [identification]
            set_text(segment, "SegmentAlgorithmName", algorithm["name"], finish)

    return adjust
