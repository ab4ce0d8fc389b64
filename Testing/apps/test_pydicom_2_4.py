"""The command line with pydicom 2.4.4, the version 3D Slicer 5.10 pins (``make install`` puts it into
.venv/pydicom-2.4.4): the phantom writes its DICOM series and knows its own files again, and ``explain``
reads it."""
import json
import os
import subprocess
import sys

import pydicom
import pytest
from helpers import REPOSITORY

PYDICOM_2_4 = REPOSITORY / ".venv" / "pydicom-2.4.4"


def _with_pydicom_2_4(*args, code=None):
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PYDICOM_2_4),
                                                                             os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-c", code] if code else [sys.executable, "-m", "xaiexplain.apps.cli", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=environment)


@pytest.mark.skipif(not PYDICOM_2_4.is_dir(), reason=f"{PYDICOM_2_4} is missing: run `make install`")
def test_phantom_and_explain_work_with_pydicom_2_4(tmp_path):
    assert _with_pydicom_2_4(code="import pydicom; print(pydicom.__version__)").stdout.strip() == "2.4.4"
    result = _with_pydicom_2_4("phantom", "--scans", "LIDC-IDRI-0078", "--out", tmp_path / "phantom")
    assert result.returncode == 0, result.stderr[-3000:]
    [series] = [p for p in (tmp_path / "phantom").rglob("*") if p.is_dir() and any(p.glob("*.dcm"))]
    files = sorted(series.glob("*.dcm"))
    assert len(files) == 87
    header = pydicom.dcmread(files[0])  # read back with the pydicom of this process (3.x)
    assert header.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert header.preamble == b"\0" * 128 and header.Manufacturer == "XAIExplain phantom"
    assert header.file_meta.ImplementationVersionName == "PYDICOM 2.4.4"  # it was written by 2.4.4
    # what a second phantom run asks before it replaces a series: is this file the phantom's own?
    known = _with_pydicom_2_4(code="from xaiexplain.io.dicom import is_phantom_file; "
                                   f"print(is_phantom_file({str(files[0])!r}))")
    assert known.stdout.strip() == "True", known.stderr[-2000:]

    result = _with_pydicom_2_4("explain", "--series", series, "--lidc", "--method", "grad-cam",
                               "--out", tmp_path / "explained")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "explained" / "nodules.json").read_text())
    assert len(summary["nodules"]) == 4
