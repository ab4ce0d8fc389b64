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


def assert_deep_taylor_conserves_layer_by_layer(network, x, layer_names):
    """Deep Taylor on ``network`` (two logits) explains the logit difference, and relevance is conserved at
    every layer a rule is applied to, among them the layers named, every batch norm folded into its
    convolution; returns the input relevance and f(x)."""
    import numpy as np

    from xaiexplain.explainers import lrp
    from xaiexplain.models.layer_chain import BATCH_NORMS

    assert not any(isinstance(layer, BATCH_NORMS) for layer in lrp.folded_layers(network))

    per_layer = []
    relevance, f = lrp.relevance(network, x, "deep-taylor", per_layer=per_layer)
    logits = network(x)
    np.testing.assert_allclose(f.numpy(), (logits[:, 1] - logits[:, 0]).detach().numpy(), rtol=1e-5, atol=1e-6)
    assert set(layer_names) <= {type(layer).__name__ for layer, _ in per_layer}
    for layer, total in per_layer:
        np.testing.assert_allclose(total.numpy(), f.numpy(), rtol=1e-4, atol=1e-5, err_msg=type(layer).__name__)
    np.testing.assert_allclose(relevance.flatten(1).sum(1).numpy(), f.numpy(), rtol=1e-4, atol=1e-5)
    return relevance, f


def assert_batch_script_explains(model_path, method, root):
    """The Slicer batch script explains a small series about CENTRE with ``model_path`` and ``method``: one
    scene folder with the scene and the method's relevance volume."""
    import subprocess
    import sys

    import pytest

    pytest.importorskip("slicer")
    series, _ = small_series(root / "series", slices=8)
    batch = REPOSITORY / "XAIExplain" / "Scripts" / "XAIExplainBatch.py"
    result = subprocess.run([sys.executable, str(batch), "--series", str(series), "--point", CENTRE, "--model",
                             str(model_path), "--method", method, "--out", str(root / "out")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    [folder] = (root / "out").iterdir()
    assert (folder / "scene.mrml").is_file() and any(f"relevance_{method}" in p.name for p in folder.iterdir())
