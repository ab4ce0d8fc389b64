"""`xaiexplain explain` on phantom series: outputs in the series' exact geometry, peaks on the nodules."""
import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage
from xaiexplain.data import lidc, series
from xaiexplain.data.sources.phantom_series import write_phantom_series

SCANS = ["LIDC-IDRI-0078", "LIDC-IDRI-0480"]
METHODS = ["saliency", "integrated-gradients", "grad-cam", "iterative:saliency"]


@pytest.fixture(scope="module")
def explained(tmp_path_factory):
    root = tmp_path_factory.mktemp("explain")
    results = {}
    for key in SCANS:
        written = write_phantom_series(lidc.find_scan_by_key(key), root / "phantom", seed=2)
        out = root / key
        command = [sys.executable, "-m", "xaiexplain.apps.cli", "explain", "--series", str(written.series_folder), "--lidc",
                   *[a for m in METHODS for a in ("--method", m)], "--out", str(out)]
        result = subprocess.run(command, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-2000:]
        results[key] = (written, out)
    return results


def test_outputs_have_exactly_the_series_geometry(explained):
    for written, out in explained.values():
        image = series.read_series(written.series_folder).image
        for method in METHODS:
            name = method.replace(":", "_")
            for kind, pixel_type in (("relevance", sitk.sitkFloat32), ("labels", sitk.sitkUInt8)):
                output = sitk.ReadImage(str(out / f"{kind}_{name}.nrrd"))
                assert output.GetPixelID() == pixel_type
                assert output.GetSize() == image.GetSize()
                np.testing.assert_allclose(output.GetSpacing(), image.GetSpacing(), atol=1e-6)
                np.testing.assert_allclose(output.GetOrigin(), image.GetOrigin(), atol=1e-4)
                np.testing.assert_allclose(output.GetDirection(), image.GetDirection(), atol=1e-9)
            labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"labels_{name}.nrrd")))
            assert set(np.unique(labels)) <= {0, 1, 2} and (labels > 0).any()


def test_nodules_json_and_panels(explained):
    written, out = explained["LIDC-IDRI-0078"]
    summary = json.loads((out / "nodules.json").read_text())
    assert summary["methods"] == METHODS
    assert len(summary["nodules"]) == 4
    for row in summary["nodules"]:
        assert 0 <= row["probability"] <= 1 and row["decision"] in ("benign", "malignant")
        assert len(row["slice_probabilities"]) == row["slices"]
        iterations = row["methods"]["iterative:saliency"]["iterations"]
        assert len(iterations) == row["slices"] and all(0 <= i <= 19 for i in iterations)
        assert (out / f"panel_{row['name']}.png").stat().st_size > 5000


def test_relevance_peaks_lie_on_the_nodules(explained):
    """The peak of the evidence for the decision, per nodule, within the ground-truth mask dilated by 2
    voxels: for most nodules with the methods that localise (see the issue notes for the fractions)."""
    hits = {method: [] for method in METHODS}
    for written, out in explained.values():
        image = series.read_series(written.series_folder).image
        truth = sitk.GetArrayFromImage(sitk.ReadImage(str(written.truth_folder / "nodules.nrrd")))
        summary = json.loads((out / "nodules.json").read_text())
        for row in summary["nodules"]:
            mask = ndimage.binary_dilation(truth == row["lidc"]["nodule_index"] + 1, iterations=2)
            for method in METHODS:
                x, y, z = image.TransformPhysicalPointToIndex(row["methods"][method]["peak_lps"])
                hits[method].append(bool(mask[z, y, x]))
    fractions = {method: float(np.mean(h)) for method, h in hits.items()}
    assert len(hits["saliency"]) >= 6
    assert fractions["saliency"] > 0.5 and fractions["integrated-gradients"] > 0.5, fractions
    # Grad-CAM's miss on the retrained classifier is held in test_explain.py::test_grad_cam_pointing_beats_chance
