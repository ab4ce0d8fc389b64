"""An explanation as DICOM (``explain --format dicom``): per method a Segmentation of its label image (the kind's
sides as coded segments, with the algorithm's identification) and a Parametric Map of its relevance (a real world
value mapping in the kind's units: evidence in logit units, sensitivity in arbitrary units, change in HU), and for
cycle-am a Parametric Map (HU) of each counterfactual volume (the nodules' box). Each object is a new series in
the source's patient, study and Frame of Reference, references the source instances (each frame the slice at
its position, or the two it lies between), and has UIDs made from the source series, the method, the model,
its options and the library's version: a rerun gives the same UIDs and file names.

Why dcmqi: its itkimage2segimage and itkimage2paramap (the PyPI wheel ``dcmqi``, the converters Slicer's
QuantitativeReporting uses) encode the frames, their geometry and their source references, and need no pydicom,
so the same objects come from the command line (pydicom 3) and from Slicer, which pins pydicom 2.4.4 (highdicom
needs pydicom 3). pydicom, either version, finishes each object (``io.dicom_finishing``). dcmqi's wheels are for
Linux and Windows; elsewhere ``--format dicom`` is refused in one sentence."""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from packaging.version import Version
from pydicom.uid import UID

from xaiexplain import __version__
from xaiexplain.data.series import quiet_pydicom
from xaiexplain.data.slice_values import shown_path
from xaiexplain.errors import XAIExplainError
from xaiexplain.io.dicom_finishing import (Finish, finish_object, parametric_map_adjustment,
                                           segmentation_adjustment)

DCMQI_MINIMUM = "1.5.6"
SEGMENTATION_TOOL, PARAMETRIC_MAP_TOOL = "itkimage2segimage", "itkimage2paramap"
PRIVATE_SCHEME = "99XAIEXPLAIN"  # "99" marks a private coding scheme: the sides of a kind have no standard code
FIRST_SERIES_NUMBER = 901  # the set's objects are numbered from here, in the order they are written


def code(value: str, scheme: str, meaning: str) -> dict:
    return {"CodeValue": value, "CodingSchemeDesignator": scheme, "CodeMeaning": meaning}


CHEST = code("51185008", "SCT", "Chest")
ARTIFICIAL_INTELLIGENCE = code("123110", "DCM", "Artificial Intelligence")
SPATIAL_AND_RELATIONAL_CONCEPT = code("309825002", "SCT", "Spatial and Relational Concept")
VISUAL_EXPLANATION = code("130401", "DCM", "Visual explanation")
IMAGE_PROCESSING = code("110001", "DCM", "Image Processing")
SEGMENTATION = code("113076", "DCM", "Segmentation")
ATTENUATION_COEFFICIENT = code("112031", "DCM", "Attenuation Coefficient")
HOUNSFIELD_UNIT = code("[hnsf'U]", "UCUM", "Hounsfield unit")
# what a kind's map measures and in which units (DICOM's codes for explanation maps, CID 7180)
QUANTITIES = {"evidence": code("130402", "DCM", "Class activation"), "sensitivity": code("130404", "DCM", "Saliency"),
              "change": ATTENUATION_COEFFICIENT}
GRAD_CAM_QUANTITY = code("130403", "DCM", "Gradient-weighted class activation")
UNITS = {"evidence": code("{logit}", "UCUM", "logit"), "sensitivity": code("[arb'U]", "UCUM", "arbitrary unit"),
         "change": HOUNSFIELD_UNIT}
SIDE_COLOURS = {1.0: (220, 40, 40), -1.0: (40, 90, 230)}  # red: malignant / brighter, blue: benign / darker
UNSIGNED_COLOUR = (40, 200, 60)  # green, as the sequential colour map draws a sensitivity
_IDENTIFYING = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")


@dataclass(frozen=True)
class DicomSource:
    """The source series' instances a derived object references, in slice order (``CTSeries.files``)."""

    folder: Path
    files: tuple[Path, ...]
    positions: np.ndarray  # along the slice normal, mm (``CTSeries.slice_z``)
    sop_class_uids: tuple[str, ...]
    sop_instance_uids: tuple[str, ...]
    modality: str
    patient_id: str
    study_instance_uid: str
    series_instance_uid: str
    # the first slice's: where the slices differ (LIDC-IDRI's de-identification gave each its own, though they
    # are one volume, as ``read_series`` checked), an object must still name one
    frame_of_reference_uid: str


def dicom_source(ct, folder) -> DicomSource:
    """The references of ``ct`` (a ``CTSeries`` read from ``folder``); one sentence refuses a series that lacks
    any a derived object must carry: PatientID, Study, Series, Frame of Reference, SOP Class and SOP Instance
    UIDs (valid; one patient, study and series; an instance UID per slice)."""
    found = {tag: [] for tag in (*_IDENTIFYING, "SOPClassUID", "SOPInstanceUID", "Modality")}
    for path in ct.files:
        with quiet_pydicom():
            header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(found))
        for tag in found:
            value = str(header.get(tag, "") or "").strip()
            if tag not in ("PatientID", "Modality") and value and not UID(value).is_valid:
                value = ""
            if not value and tag != "Modality":
                raise XAIExplainError(f"{shown_path(path)} in {shown_path(folder)} has no valid {tag}, which a DICOM "
                                      "Segmentation or Parametric Map of the series must reference; explain it "
                                      "without --format dicom")
            found[tag].append(value)
    for tag in _IDENTIFYING[:3]:  # LIDC-IDRI's de-identification gave every slice its own Frame of Reference
        if len(set(found[tag])) > 1:
            raise XAIExplainError(f"the slices of {shown_path(folder)} differ in their {tag}, so no DICOM object can "
                                  "be derived from them as one series; explain it without --format dicom")
    if len(set(found["SOPInstanceUID"])) < len(ct.files):
        raise XAIExplainError(f"two slices of {shown_path(folder)} share one SOPInstanceUID, so a DICOM object cannot "
                              "reference them apart; explain it without --format dicom")
    return DicomSource(folder=Path(folder), files=tuple(ct.files), positions=np.asarray(ct.slice_z, float),
                       sop_class_uids=tuple(found["SOPClassUID"]), sop_instance_uids=tuple(found["SOPInstanceUID"]),
                       modality=found["Modality"][0] or "CT", patient_id=found["PatientID"][0],
                       study_instance_uid=found["StudyInstanceUID"][0],
                       series_instance_uid=found["SeriesInstanceUID"][0],
                       frame_of_reference_uid=found["FrameOfReferenceUID"][0])


def dicom_source_of_files(files, image: sitk.Image, what: str) -> DicomSource:
    """The references of a series given as its DICOM ``files`` (Slicer's DICOM database lists a loaded volume's
    files, which may lie among other series' files), for the objects of ``image`` (``what``: its name in a
    sentence), which must lie on the series' grid: its frames are matched to the slices by position. One sentence
    refuses missing files, a series ``read_series`` refuses, and another grid."""
    from xaiexplain.data.series import read_series

    files = [Path(path) for path in files]
    missing = [path for path in files if not path.is_file()] or ([] if files else ["no file is listed"])
    if missing:
        raise XAIExplainError(f"the DICOM files of {what} are not there ({shown_path(missing[0])}), so no DICOM "
                              "object can reference its series")
    with tempfile.TemporaryDirectory(prefix="xaiexplain-source-") as temporary:
        linked = {}
        for n, path in enumerate(files):  # exactly these files, under names of our own
            linked[Path(temporary) / f"{n:06d}.dcm"] = path
            link_or_copy(path, Path(temporary) / f"{n:06d}.dcm")
        # the grid is compared, not the values: read_series' checks of gaps and CT numbers do not apply
        ct = read_series(temporary, allow_gaps=True, allow_implausible_hu=True)
        source = dicom_source(ct, temporary)
    difference = grid_difference(image, ct.image)
    if difference:
        raise XAIExplainError(f"{what} is not on the grid of its DICOM series ({difference}), so DICOM objects of it "
                              "could not reference the series' slices; export NIfTI, or explain the series as loaded")
    try:
        folder = Path(os.path.commonpath([path.parent for path in files]))
    except ValueError:  # on several drives
        folder = files[0].parent
    return dataclasses.replace(source, folder=folder, files=tuple(linked[Path(f)] for f in source.files))


def grid_difference(image: sitk.Image, reference: sitk.Image) -> str | None:
    """How ``image``'s voxel grid differs from ``reference``'s (size, spacing, origin, axes), or None."""
    if image.GetSize() != reference.GetSize():
        return f"{'x'.join(map(str, image.GetSize()))} voxels, not {'x'.join(map(str, reference.GetSize()))}"
    for name, tolerance in (("Spacing", 1e-3), ("Origin", 1e-2), ("Direction", 1e-4)):
        mine, theirs = (np.asarray(getattr(i, f"Get{name}")()) for i in (image, reference))
        if not np.allclose(mine, theirs, atol=tolerance):
            return f"its {name.lower()} is {np.round(mine, 4).tolist()}, the series' {np.round(theirs, 4).tolist()}"
    return None


def dcmqi_version() -> str | None:
    try:
        return importlib.metadata.version("dcmqi")
    except importlib.metadata.PackageNotFoundError:
        return None


def dcmqi_tool(name: str) -> Path:
    """The path of dcmqi's executable ``name``; one sentence where dcmqi is missing or too old."""
    version = dcmqi_version()
    if version is None or Version(version) < Version(DCMQI_MINIMUM):
        found = f"this Python has dcmqi {version}" if version else "this Python has no dcmqi"
        raise XAIExplainError(f"DICOM output is written by dcmqi {DCMQI_MINIMUM} or later (pip install "
                              f"\"dcmqi>={DCMQI_MINIMUM}\"; its wheels are for Linux and Windows) and {found}")
    import dcmqi

    tool = Path(dcmqi.__file__).resolve().parent / "bin" / (name + (".exe" if os.name == "nt" else ""))
    if not tool.is_file():
        raise XAIExplainError(f"dcmqi {version} lacks its {name} executable ({tool}); reinstall dcmqi")
    return tool


def check_dicom_writer() -> None:
    """Fail now, in one sentence, where the DICOM objects cannot be written (before anything is computed)."""
    for name in (SEGMENTATION_TOOL, PARAMETRIC_MAP_TOOL):
        dcmqi_tool(name)


def has_segments(labels: sitk.Image) -> bool:
    """Whether a label image holds any label: a DICOM Segmentation needs at least one segment (dcmqi refuses an
    empty one), so an explanation without any region (no nodule) has none."""
    return bool(np.any(sitk.GetArrayViewFromImage(labels)))


def content_label(text: str) -> str:
    """A Content Label (CS: capitals, digits, underscores, 16 characters) made from a method's name."""
    return re.sub(r"[^A-Z0-9]+", "_", text.upper()).strip("_")[:16] or "XAIEXPLAIN"


class DicomWriter:
    """Writes one output set's DICOM objects from its images, through a temporary folder that holds the source
    slices (linked, under names dcmqi's comma-separated lists cannot mistake) and dcmqi's own outputs."""

    def __init__(self, source: DicomSource, temporary: Path, identity: tuple[str, ...], model: str):
        self.source, self.temporary, self.identity, self.model = source, temporary, identity, model
        self.created = datetime.now()  # one time for the set's objects
        self.series_number = FIRST_SERIES_NUMBER
        self.source_folder = temporary / "source"
        self.source_folder.mkdir()
        for n, path in enumerate(source.files):
            link_or_copy(path, self.source_folder / f"{n:06d}.dcm")

    def segmentation(self, method, labels: sitk.Image, target: Path, options: dict) -> None:
        """The Segmentation of ``method``'s (a registry Method) label image, which must hold a label
        (``has_segments``); ``options``: the method's, recorded as the algorithm's parameters."""
        kind = method.map_kind
        present = set(np.unique(sitk.GetArrayViewFromImage(labels)).tolist()) - {0}
        colour = {value: SIDE_COLOURS.get(sign, UNSIGNED_COLOUR) if kind.colour_map == "diverging" else UNSIGNED_COLOUR
                  for _, value, sign in kind.sides}
        metadata = {"ContentCreatorName": "XAIExplain", "ClinicalTrialSeriesID": "", "ClinicalTrialTimePointID": "",
                    "ClinicalTrialCoordinatingCenterName": "", "SeriesNumber": str(self._next_series_number()),
                    "InstanceNumber": "1", "BodyPartExamined": "CHEST", "segmentAttributes": [[
                        {"labelID": value, "SegmentDescription": f"side {value}", "SegmentAlgorithmType": "AUTOMATIC",
                         "SegmentAlgorithmName": content_label(method.name),
                         "SegmentedPropertyCategoryCodeSequence": SPATIAL_AND_RELATIONAL_CONCEPT,
                         "SegmentedPropertyTypeCodeSequence": self._segment_type(method),
                         "SegmentedPropertyTypeModifierCodeSequence": code(f"{kind.name[:8].upper()}-{value}",
                                                                           PRIVATE_SCHEME, name),
                         "recommendedDisplayRGBValue": list(colour[value])}
                        for name, value, _ in kind.sides if value in present]]}
        finish = self._finish(f"{method.name} labels", method.name, f"labels of {method.name} ({kind.name})",
                              ("segmentation", method.name), SEGMENTATION)
        segments = {f"side {value}": {"label": name, "description": f"{name}: {method.name} ({method.summary}); "
                                      f"{kind.meaning}; {method.reference}"} for name, value, _ in kind.sides}
        algorithm = {"family": ARTIFICIAL_INTELLIGENCE, "name": method.name, "version": f"xaiexplain {__version__}",
                     "source": "XAIExplain", "parameters": json.dumps({"model": self.model, "options": options})}
        finish.adjust = segmentation_adjustment(segments, algorithm, PRIVATE_SCHEME, finish)
        self._write(SEGMENTATION_TOOL, labels, metadata, target, finish, f"the DICOM Segmentation of {method.name}")

    def relevance_map(self, method, relevance: sitk.Image, target: Path) -> None:
        """The Parametric Map of ``method``'s relevance, in its kind's units."""
        kind = method.map_kind
        finish = self._finish(f"{method.name} relevance", method.name, f"relevance of {method.name} ({kind.name})",
                              ("relevance", method.name), VISUAL_EXPLANATION,
                              f"{method.name} ({method.summary}; {kind.meaning}) by xaiexplain {__version__} with the "
                              f"model {self.model}; {method.reference}")
        units = UNITS[kind.name]
        self._parametric_map(relevance, target, self._quantity(method), units, finish, kind.name,
                             f"{kind.name} in {units['CodeMeaning']} units",
                             f"the DICOM Parametric Map of {method.name}")

    def counterfactual(self, name: str, image: sitk.Image, target: Path, description: str) -> None:
        """A counterfactual volume (``name``: malignant or benign) as a Parametric Map in HU."""
        finish = self._finish(f"cycle-am counterfactual {name}", f"COUNTERFACTUAL_{name}", description,
                              ("counterfactual", name), IMAGE_PROCESSING,
                              f"{description}, by cycle-am (xaiexplain {__version__})")
        self._parametric_map(image, target, ATTENUATION_COEFFICIENT, HOUNSFIELD_UNIT, finish, "HU",
                             "CT number, Hounsfield units", f"the DICOM Parametric Map of the {name} counterfactual")

    def _parametric_map(self, image, target, quantity, units, finish, lut_label, lut_explanation, what) -> None:
        array = sitk.GetArrayViewFromImage(image)
        metadata = {"SeriesNumber": str(self._next_series_number()), "InstanceNumber": "1", "BodyPartExamined": "CHEST",
                    "QuantityValueCode": quantity, "MeasurementUnitsCode": units, "DerivationCode": finish.derivation,
                    "AnatomicRegionSequence": CHEST, "FrameLaterality": "U", "RealWorldValueSlope": 1}
        finish.adjust = parametric_map_adjustment(self.source.modality, (float(array.min()), float(array.max())),
                                                  lut_label, lut_explanation, finish)
        self._write(PARAMETRIC_MAP_TOOL, image, metadata, target, finish, what)

    def _quantity(self, method) -> dict:
        return GRAD_CAM_QUANTITY if "grad-cam" in method.name else QUANTITIES[method.map_kind.name]

    def _segment_type(self, method) -> dict:
        """What a segment is a region of: the map's quantity, for a change (in HU) a visual explanation."""
        return VISUAL_EXPLANATION if method.map_kind.name == "change" else self._quantity(method)

    def _finish(self, series, label, content, role, derivation, derivation_description=None) -> Finish:
        return Finish(uid_parts=(*self.identity, *role), created=self.created,
                      series_description=f"XAIExplain {series}",
                      content_label=content_label(label), content_description=content, derivation=derivation,
                      derivation_description=derivation_description,
                      software_versions=(f"xaiexplain {__version__}", f"dcmqi {dcmqi_version()}"))

    def _next_series_number(self) -> int:
        self.series_number += 1
        return self.series_number - 1

    def _write(self, tool: str, image: sitk.Image, metadata: dict, target: Path, finish: Finish, what: str) -> None:
        work = Path(tempfile.mkdtemp(dir=self.temporary))
        sitk.WriteImage(image, str(work / "input.nrrd"))
        (work / "metadata.json").write_text(json.dumps(metadata))
        image_option = "--inputImageList" if tool == SEGMENTATION_TOOL else "--inputImage"
        raw = work / "object.dcm"
        result = subprocess.run([str(dcmqi_tool(tool)), image_option, str(work / "input.nrrd"), "--inputDICOMDirectory",
                                 str(self.source_folder), "--inputMetadata", str(work / "metadata.json"),
                                 "--outputDICOM", str(raw)], capture_output=True, text=True, errors="replace")
        if result.returncode != 0 or not raw.is_file():
            lines = [line.strip() for line in (result.stdout + result.stderr).splitlines() if line.strip()]
            said = next((line for line in lines if "error" in line.lower()), lines[-1] if lines else "")
            raise XAIExplainError(f"dcmqi's {tool} could not write {what} ({said[:300]})")
        finish_object(raw, target, self.source, finish)
        shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def dicom_writer(source: DicomSource, identity: tuple[str, ...], model: str):
    """A ``DicomWriter`` for one output set; its temporary folder is removed afterwards, whatever happens.
    ``identity``: what makes the set's UIDs (the source series, the model, the options, the library's version)."""
    with tempfile.TemporaryDirectory(prefix="xaiexplain-dicom-") as temporary:
        yield DicomWriter(source, Path(temporary), tuple(identity), model)


def link_or_copy(path: Path, link: Path) -> None:
    """``link`` to the source file ``path``: a symbolic link, else a hard link, else a copy (Windows without the
    right to make links); the source is never written."""
    try:
        os.symlink(Path(path).resolve(), link)
    except OSError:
        try:
            os.link(path, link)
        except OSError:
            shutil.copyfile(path, link)
