"""``explain --format dicom``: a DICOM Segmentation and Parametric Map per method (and cycle-am's counterfactuals)
that dciodvfy finds no error in, that an independent reader (highdicom, pydicom 3) reads back to the NRRD's labels
and values at the same world positions, that reference the input's instances, that pydicom 2.4.4 (Slicer's)
writes the same, and that a series without the UIDs they need is refused before anything is written."""
import json
import os
import sys

import highdicom
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from dicom_reading import dciodvfy_errors, frame_sources, image_on_grid, source_instances, without_times
from helpers import REPOSITORY, assert_one_line_error, small_series, xaiexplain
from xaiexplain.errors import XAIExplainError
from xaiexplain.explainers.kinds import KINDS
from xaiexplain.io import dicom_outputs

PYDICOM_2_4 = REPOSITORY / ".venv" / "pydicom-2.4.4"
METHODS = {"saliency": "sensitivity", "cycle-am": "change"}
UNITS = {"sensitivity": "[arb'U]", "change": "[hnsf'U]", "evidence": "{logit}"}


def explain_as_dicom(series, out, *extra, methods=METHODS, environment=None):
    arguments = ["explain", "--series", series, *extra, "--format", "dicom", "--format", "nifti", "--out", out]
    for method in methods:
        arguments += ["--method", method]
    if environment is None:
        return xaiexplain(*arguments)
    import subprocess

    return subprocess.run([sys.executable, "-m", "xaiexplain.apps.cli", *map(str, arguments)], capture_output=True,
                          text=True, env=environment)


def digest(folder):
    import hashlib

    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def phantom_explained(tmp_path_factory):
    """The phantom series of LIDC-IDRI-0078 explained by saliency (a sensitivity) and cycle-am (a change, with its
    counterfactuals) as NRRD, DICOM and NIfTI: (series folder, output folder)."""
    from xaiexplain.data import lidc
    from xaiexplain.data.sources.phantom_series import write_phantom_series

    root = tmp_path_factory.mktemp("dicom-outputs")
    series = write_phantom_series(lidc.find_scan_by_key("LIDC-IDRI-0078"), root / "phantom", seed=0).series_folder
    before = digest(series)
    result = explain_as_dicom(series, root / "explained", "--lidc")
    assert result.returncode == 0, result.stderr[-3000:]
    assert digest(series) == before  # the input is never changed
    return series, root / "explained"


def dicom_files(summary) -> list[tuple[str, str]]:
    """(file, what) of every DICOM object the manifest lists."""
    files = []
    for method in METHODS:
        files += [(summary["files"][method]["labels_dicom"], "SEG"),
                  (summary["files"][method]["relevance_dicom"], "PM")]
    files += [(summary["files"][f"counterfactual_{side}_dicom"], "PM") for side in ("malignant", "benign")]
    return files


def test_every_object_is_listed_and_dciodvfy_finds_no_error(phantom_explained):
    _, out = phantom_explained
    summary = json.loads((out / "nodules.json").read_text())
    assert summary["formats"] == ["nrrd", "dicom", "nifti"]
    files = dicom_files(summary)
    assert sorted(name for name, _ in files) == sorted(p.name for p in out.glob("*.dcm"))
    assert {name for name, _ in files} <= set(summary["output_files"])
    for name, what in files:
        assert pydicom.dcmread(out / name, stop_before_pixels=True).Modality == ("SEG" if what == "SEG" else "CT")
        assert dciodvfy_errors(out / name) == [], name


def test_highdicom_reads_the_labels_and_values_at_the_nrrds_world_positions(phantom_explained):
    _, out = phantom_explained
    summary = json.loads((out / "nodules.json").read_text())
    for method, kind in METHODS.items():
        files = summary["files"][method]
        relevance = sitk.ReadImage(str(out / files["relevance"]))
        volume = highdicom.pm.ParametricMap.from_dataset(pydicom.dcmread(out / files["relevance_dicom"])).get_volume()
        expected = image_on_grid(relevance, volume.array.shape, volume.affine)
        assert volume.array.shape == expected.shape == sitk.GetArrayViewFromImage(relevance).shape
        np.testing.assert_array_equal(volume.array.astype(np.float32), expected)  # float32: exact

        labels = sitk.ReadImage(str(out / files["labels"]))
        segmentation = highdicom.seg.segread(out / files["labels_dicom"])
        value_of = {int(s.SegmentNumber): KINDS[kind].labels[str(s.SegmentLabel)] for s in segmentation.SegmentSequence}
        read = segmentation.get_volume(combine_segments=True, relabel=False)
        read_labels = np.vectorize(lambda n: value_of.get(int(n), 0), otypes=[np.uint8])(read.array)
        expected = image_on_grid(labels, read.array.shape, read.affine)
        np.testing.assert_array_equal(read_labels, expected)
        # the frames the Segmentation leaves out (empty for every segment) hold no label in the NRRD either
        assert np.count_nonzero(expected) == np.count_nonzero(sitk.GetArrayViewFromImage(labels)) > 0
    for side in ("malignant", "benign"):
        image = sitk.ReadImage(str(out / summary["files"][f"counterfactual_{side}"]))
        dataset = pydicom.dcmread(out / summary["files"][f"counterfactual_{side}_dicom"])
        volume = highdicom.pm.ParametricMap.from_dataset(dataset).get_volume()
        np.testing.assert_array_equal(volume.array.astype(np.float32),
                                      image_on_grid(image, volume.array.shape, volume.affine))
        mapping = dataset.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
        assert mapping.MeasurementUnitsCodeSequence[0].CodeValue == "[hnsf'U]"


def test_objects_reference_the_input_series_and_its_instances(phantom_explained):
    series, out = phantom_explained
    instances = source_instances(series)
    source = pydicom.dcmread(next(series.iterdir()), stop_before_pixels=True)
    summary = json.loads((out / "nodules.json").read_text())
    series_uids = set()
    for name, _ in dicom_files(summary):
        dataset = pydicom.dcmread(out / name)
        for keyword in ("PatientID", "StudyInstanceUID", "FrameOfReferenceUID"):
            assert dataset[keyword].value == source[keyword].value, (name, keyword)
        series_uids.add(dataset.SeriesInstanceUID)
        [referenced] = dataset.ReferencedSeriesSequence
        assert referenced.SeriesInstanceUID == source.SeriesInstanceUID
        listed = {item.ReferencedSOPInstanceUID for item in referenced.ReferencedInstanceSequence}
        frames = frame_sources(dataset)
        for position, uids in frames:
            assert uids == [instances[round(position, 3)]], (name, position)
        assert listed == {uid for _, uids in frames for uid in uids}, name  # the instances its frames come from
        if name.startswith("relevance"):  # a map of the whole series: every slice
            assert listed == set(instances.values())
    assert len(series_uids) == len(dicom_files(summary)) and source.SeriesInstanceUID not in series_uids


def test_segments_and_maps_say_what_they_are(phantom_explained):
    _, out = phantom_explained
    summary = json.loads((out / "nodules.json").read_text())
    for method, kind in METHODS.items():
        segmentation = pydicom.dcmread(out / summary["files"][method]["labels_dicom"])
        assert set(KINDS[kind].labels) >= {s.SegmentLabel for s in segmentation.SegmentSequence}
        for segment in segmentation.SegmentSequence:
            assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "309825002"
            assert segment.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "DCM"
            [algorithm] = segment.SegmentationAlgorithmIdentificationSequence
            assert algorithm.AlgorithmName == method and algorithm.AlgorithmVersion.startswith("xaiexplain ")
            assert algorithm.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"
            assert method in segment.SegmentDescription and "et al." in segment.SegmentDescription  # its reference
        parametric_map = pydicom.dcmread(out / summary["files"][method]["relevance_dicom"], stop_before_pixels=True)
        assert method in parametric_map.SeriesDescription
        mapping = parametric_map.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
        assert mapping.MeasurementUnitsCodeSequence[0].CodeValue == UNITS[kind]
        relevance = sitk.GetArrayFromImage(sitk.ReadImage(str(out / summary["files"][method]["relevance"])))
        assert (mapping.DoubleFloatRealWorldValueFirstValueMapped, mapping.DoubleFloatRealWorldValueLastValueMapped) \
            == (float(relevance.min()), float(relevance.max()))


@pytest.mark.skipif(not PYDICOM_2_4.is_dir(), reason=f"{PYDICOM_2_4} is missing: run `make install`")
def test_pydicom_2_4_writes_the_same_objects_under_the_same_names(phantom_explained, tmp_path):
    series, out = phantom_explained
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PYDICOM_2_4),
                                                                             os.environ.get("PYTHONPATH")]))}
    import subprocess

    version = subprocess.run([sys.executable, "-c", "import pydicom; print(pydicom.__version__)"],
                             capture_output=True, text=True, env=environment)
    assert version.stdout.strip() == "2.4.4"
    result = explain_as_dicom(series, tmp_path / "again", "--lidc", environment=environment)
    assert result.returncode == 0, result.stderr[-3000:]
    names = sorted(p.name for p in out.glob("*.dcm"))
    assert sorted(p.name for p in (tmp_path / "again").glob("*.dcm")) == names
    for name in names:
        first, again = without_times(out / name), without_times(tmp_path / "again" / name)
        assert first.file_meta == again.file_meta and first == again, name  # the same UIDs: a rerun's objects
        assert (out / name).stat().st_size == (tmp_path / "again" / name).stat().st_size


def test_a_series_without_the_uids_a_derived_object_needs_is_refused_whole(tmp_path):
    series, _ = small_series(tmp_path / "series")
    for path in sorted(series.iterdir())[2:3]:
        dataset = pydicom.dcmread(path)
        del dataset.FrameOfReferenceUID
        dataset.save_as(path, enforce_file_format=True)
    before = digest(tmp_path / "series")
    result = explain_as_dicom(series, tmp_path / "out", "--point", "0,0,-95", methods=["saliency"])
    assert_one_line_error(result, "FrameOfReferenceUID", "--format dicom")
    assert not (tmp_path / "out").exists() and digest(tmp_path / "series") == before


def test_a_failing_dicom_writer_leaves_no_part_of_the_set(tmp_path, monkeypatch):
    import shutil
    from pathlib import Path

    from xaiexplain.io.explanation_files import write_series_explanation

    failing = shutil.which("false")
    if failing is None:
        pytest.skip("no `false` command here to stand for a dcmqi that fails")
    series, _ = small_series(tmp_path / "series")
    monkeypatch.setattr(dicom_outputs, "dcmqi_tool", lambda name: Path(failing))
    with pytest.raises(XAIExplainError, match="dcmqi's itkimage2paramap could not write the DICOM Parametric Map"):
        write_series_explanation(series, tmp_path / "out", ["saliency"], points=[(0.0, 0.0, -95.0)], panels=False,
                                 formats=["dicom"])
    assert not (tmp_path / "out").exists()  # nor the NRRDs written before the DICOM objects
    assert not list(tmp_path.glob(".*"))  # nor a temporary


def test_dicom_output_without_dcmqi_is_one_sentence(monkeypatch):
    monkeypatch.setattr(dicom_outputs, "dcmqi_version", lambda: None)
    with pytest.raises(XAIExplainError, match=r"pip install \"dcmqi>=1.5.6\"") as error:
        dicom_outputs.check_dicom_writer()
    assert "\n" not in str(error.value)


def test_an_unknown_format_is_refused(tmp_path):
    result = xaiexplain("explain", "--series", tmp_path, "--point", "0,0,0", "--method", "saliency", "--format",
                        "dicom,png", "--out", tmp_path / "out")
    assert result.returncode == 2 and "'png' is not an output format" in result.stderr
    assert not (tmp_path / "out").exists()


def test_the_real_lidc_series_gives_valid_objects_that_reference_it(real_series_folder, tmp_path):
    result = explain_as_dicom(real_series_folder, tmp_path / "out", "--lidc", methods=["saliency"])
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "nodules.json").read_text())
    instances = source_instances(next(p for p in real_series_folder.rglob("*") if p.is_dir() and
                                      any(q.suffix == ".dcm" for q in p.iterdir())))
    first_slice = min((p for p in real_series_folder.rglob("*.dcm")),
                      key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))
    for key in ("labels_dicom", "relevance_dicom"):
        path = tmp_path / "out" / summary["files"]["saliency"][key]
        assert dciodvfy_errors(path) == [], key
        # LIDC-IDRI's slices each have their own Frame of Reference UID: the objects name the first slice's
        assert pydicom.dcmread(path, stop_before_pixels=True).FrameOfReferenceUID == \
            pydicom.dcmread(first_slice, stop_before_pixels=True).FrameOfReferenceUID
        for position, uids in frame_sources(pydicom.dcmread(path)):
            assert uids == [instances[round(position, 3)]]
    relevance = sitk.ReadImage(str(tmp_path / "out" / summary["files"]["saliency"]["relevance"]))
    volume = highdicom.pm.ParametricMap.from_dataset(
        pydicom.dcmread(tmp_path / "out" / summary["files"]["saliency"]["relevance_dicom"])).get_volume()
    np.testing.assert_array_equal(volume.array.astype(np.float32),
                                  image_on_grid(relevance, volume.array.shape, volume.affine))
