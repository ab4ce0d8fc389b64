"""Helpers the test suites share (this folder is on sys.path through conftest.py)."""
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
from xaiexplain.data.geometry import ScanGeometry
from xaiexplain.io.dicom import write_dicom_series

REPOSITORY = Path(__file__).resolve().parents[1]
CENTRE = "0,0,-95"  # LPS mm: inside the bright square of small_series


def xaiexplain(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "xaiexplain.apps.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd)


def assert_one_line_error(result, *phrases):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


def small_series(root, series_uid="1.2.826.0.1.3680043.8.498.1", patient="PHANTOM-1", slices=6):
    geometry = ScanGeometry(patient_id=patient, study_instance_uid="1.2.826.0.1.3680043.8.498.2",
                            series_instance_uid=series_uid, pixel_spacing=0.8, slice_thickness=2.0,
                            slice_z=tuple(-100.0 + 2.0 * k for k in range(slices)), rows=64, columns=64)
    hu = np.full(geometry.shape, -850, np.int16)
    hu[:, 28:36, 28:36] = 40
    return write_dicom_series(hu, geometry, root), geometry


def another_classifier(folder):
    """The demo classifier with one bias changed, as a bundle folder: another network, for which the shipped
    cycle-am generators were not trained."""
    import copy

    import torch
    import xaiexplain
    from xaiexplain.models.bundles import save_bundle

    bundle = xaiexplain.load_bundle()
    model = copy.deepcopy(bundle.model)
    with torch.no_grad():
        model.classifier.bias[0] += 0.01
    config = {key: value for key, value in bundle.config.items() if key not in ("format", "format_version")}
    return save_bundle(folder, model, config)


def set_header_text(path, tag, text):
    """Put ``text`` as the value of ``tag`` (group, element) in the explicit-VR file at ``path``, byte for byte:
    pydicom refuses to write what a hostile header holds (InstanceNumber 'abc')."""
    raw = path.read_bytes()
    at = raw.index(struct.pack("<HH", *tag))
    length = struct.unpack("<H", raw[at + 6:at + 8])[0]
    value = text.encode("ascii") + b" " * (len(text) % 2)
    path.write_bytes(raw[:at + 6] + struct.pack("<H", len(value)) + value + raw[at + 8 + length:])
