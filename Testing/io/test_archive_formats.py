"""`xaiexplain explain --lidc-root ... --format dicom,nifti` (issue 28): each series of a download gets the DICOM
objects and NIfTI files `explain --series` writes; a series explained before without them is explained again when
they are asked for, and kept when it has every format asked for; a series no DICOM object can be made of fails
alone, its earlier explanation left whole."""
import json

import pydicom
import pytest
from conftest import TREE_PHANTOM_PATIENTS
from test_archive_failures import download_of, output_name, series_folder, table
from xaiexplain.io import archive_explanation
from xaiexplain.io.archive_explanation import explain_archive
from xaiexplain.io.explanation_files import SERIES_MANIFEST

GOOD, OTHER = TREE_PHANTOM_PATIENTS


@pytest.fixture(scope="module")
def download(lidc_download_tree, tmp_path_factory):
    """GOOD as downloaded, and a copy of OTHER whose third slice has no FrameOfReferenceUID (a derived DICOM object
    must name one): (the download with GOOD only, the download with both)."""
    base = tmp_path_factory.mktemp("formats")
    (base / "good").mkdir()
    (base / "both").mkdir()
    good = download_of(lidc_download_tree, base / "good", linked=[GOOD])
    both = download_of(lidc_download_tree, base / "both", linked=[GOOD], copied=[OTHER])
    victim = sorted(series_folder(both / OTHER).iterdir())[2]
    header = pydicom.dcmread(victim)
    del header.FrameOfReferenceUID
    header.save_as(victim)
    return good, both


def formats_of(folder):
    return json.loads((folder / SERIES_MANIFEST).read_text()).get("formats")


def test_formats_per_series_and_a_rerun_explains_what_lacks_a_format(download, tmp_path):
    from helpers import xaiexplain

    good, both = download
    out = tmp_path / "out"
    first = explain_archive(good, out, ["saliency"], device="cpu", progress=False)
    folder = out / output_name(GOOD)
    assert [r["status"] for r in first["series"]] == ["explained"] and formats_of(folder) == ["nrrd"]
    [series] = archive_explanation.lidc_archive_series(good)
    for formats, done in ((("nrrd",), True), (("nrrd", "nifti"), False), (("nrrd", "dicom"), False)):
        asked = archive_explanation._SeriesTask(series, str(out), ("saliency",), first["model"], (), "cpu", False, "",
                                                formats=formats)
        assert archive_explanation._is_done(folder, asked) == done, formats

    result = xaiexplain("explain", "--lidc-root", both, "--method", "saliency", "--device", "cpu", "--format",
                        "dicom,nifti", "--out", out)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    [line] = [line for line in result.stderr.splitlines() if "failed" in line]  # beside the progress bars
    assert f"failed {output_name(OTHER)}: " in line and "FrameOfReferenceUID" in line
    assert "1 series explained, 0 kept from an earlier run, 1 failed" in result.stdout  # GOOD lacked DICOM
    written = json.loads((folder / SERIES_MANIFEST).read_text())
    assert written["formats"] == ["nrrd", "dicom", "nifti"]
    files = written["files"]["saliency"]
    for key in ("relevance", "labels", "relevance_nifti", "labels_nifti", "relevance_dicom", "labels_dicom"):
        assert (folder / files[key]).is_file(), key
    source = pydicom.dcmread(next(series_folder(good / GOOD).iterdir()), stop_before_pixels=True)
    dataset = pydicom.dcmread(folder / files["relevance_dicom"], stop_before_pixels=True)
    assert dataset.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert {row["patient_id"] for row in table(out)} == {GOOD}
    assert json.loads((out / "archive.json").read_text())["formats"] == ["nrrd", "dicom", "nifti"]
    assert not (out / output_name(OTHER)).exists()  # refused before anything was computed or written

    again = explain_archive(good, out, ["saliency"], device="cpu", progress=False, formats=["dicom"])
    assert [r["status"] for r in again["series"]] == ["kept"]  # it has DICOM, and more
