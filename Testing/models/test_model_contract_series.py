"""Issue 26: the model contract in the series pipeline, the benchmark and cycle-am training: patches cut at a
model's input spec (size, field of view, neighbouring slices as channels), maps back where their pixels and
channels lie, and what a model cannot serve refused or skipped with the reason."""
import json
import textwrap

import numpy as np
import pytest

import xaiexplain
from helpers import assert_one_line_error, xaiexplain as run_cli
from user_models import SMALL_MODEL, USER_MODEL, module_bundle, nodule_patches
from xaiexplain.errors import XAIExplainError


@pytest.fixture(scope="module")
def user_bundle(tmp_path_factory):
    return module_bundle(tmp_path_factory.mktemp("user"), USER_MODEL, "UserNet", {"width": 8},
                         input_spec={"patch_size": 96, "field_of_view_mm": 60.0, "slices": 3},
                         output_spec={"form": "logit", "entry": "logit"})


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory):
    """A user's 2D module (batch norm, max pooling, GELU, two logits) at 48 px / 60 mm, random weights."""
    return module_bundle(tmp_path_factory.mktemp("small"), SMALL_MODEL, "SmallNet",
                         input_spec={"patch_size": 48, "field_of_view_mm": 60})


def test_a_series_is_not_yet_explained_with_non_square_patches_and_says_so(tmp_path):
    from xaiexplain.explainers.on_series import load_series_classifier

    oblong = module_bundle(tmp_path, SMALL_MODEL, "SmallNet", input_spec={"patch_size": [48, 64],
                                                                          "field_of_view_mm": [60, 80]})
    assert xaiexplain.explain(oblong, nodule_patches(1, size=64)[:, :48], "saliency").shape == (1, 48, 64)
    with pytest.raises(XAIExplainError, match="reads patches of 48 x 64 px across 60 x 80 mm; .* not yet"):
        load_series_classifier(oblong)


PROBE_MODEL = textwrap.dedent('''
    import torch
    from torch import nn

    class PointProbe(nn.Module):
        """One logit: a fixed linear filter that weighs one pixel of the patch, (row, column)."""
        def __init__(self, size=48, row=30, column=12):
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(1, 1, size, size))
            with torch.no_grad():
                self.weight[0, 0, row, column] = 1.0

        def forward(self, x):
            return (x * self.weight).sum(dim=(1, 2, 3))[:, None] - 0.5
''')


@pytest.mark.parametrize("pixel_mm, slice_mm, size, field_of_view", [(0.8, 2.0, 48, 60.0), (0.6, 2.5, 40, 30.0)])
def test_the_map_of_an_analytic_model_lands_on_the_world_point_it_weighs(tmp_path, pixel_mm, slice_mm, size,
                                                                         field_of_view):
    """Any square one-slice contract: the patches are cut at the model's size and field of view, and its map goes
    back where its pixels lie. The probe weighs patch pixel (row, column), i.e. the world point centre +
    ((column - (size - 1) / 2) * pixel, (row - (size - 1) / 2) * pixel) in x, y: the saliency peak lands there
    within half a voxel, on an anisotropic series."""
    from xaiexplain.data.geometry import ScanGeometry
    from xaiexplain.data.series import read_series
    from xaiexplain.io.dicom import write_dicom_series

    row, column = 30, 12
    bundle = module_bundle(tmp_path, PROBE_MODEL, "PointProbe", {"size": size, "row": row, "column": column},
                           input_spec={"patch_size": size, "field_of_view_mm": field_of_view},
                           output_spec={"form": "logit"})
    geometry = ScanGeometry(patient_id="PROBE", study_instance_uid="1.2.826.0.1.3680043.8.498.70",
                            series_instance_uid="1.2.826.0.1.3680043.8.498.71", pixel_spacing=pixel_mm,
                            slice_thickness=slice_mm, slice_z=tuple(-100.0 + slice_mm * k for k in range(7)),
                            rows=96, columns=96)
    folder = write_dicom_series(np.full(geometry.shape, -850, np.int16), geometry, tmp_path / "series")
    ct = read_series(folder)
    centre = np.asarray(ct.image.TransformContinuousIndexToPhysicalPoint((47.3, 44.6, 3.0)))
    result = xaiexplain.explain_series(ct, [tuple(centre)], bundle, ["saliency"])
    assert result.stacks[0].patches.shape[1:] == (size, size)
    volume = sitk_array(result.relevance["saliency"])
    peak = np.unravel_index(np.argmax(volume), volume.shape)  # (slice, row, column)
    peak_lps = np.asarray(result.relevance["saliency"].TransformIndexToPhysicalPoint(
        [int(peak[2]), int(peak[1]), int(peak[0])]))
    patch_pixel = field_of_view / size
    expected = centre[:2] + (np.array([column, row]) - (size - 1) / 2) * patch_pixel
    assert np.all(np.abs(peak_lps[:2] - expected) <= pixel_mm / 2 + 1e-6), (peak_lps, expected)


def sitk_array(image):
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(image)


PROBE_25D_MODEL = PROBE_MODEL.replace("torch.zeros(1, 1, size, size)", "torch.zeros(1, 3, size, size)").replace(
    "def __init__(self, size=48, row=30, column=12):", "def __init__(self, size=48, row=30, column=12, channel=0):").replace(
    "self.weight[0, 0, row, column] = 1.0", "self.weight[0, channel, row, column] = 1.0")


@pytest.mark.parametrize("channel", [0, 1, 2])
def test_a_2_5d_models_channel_maps_go_back_on_the_slices_they_were_read_from(tmp_path, channel):
    """Three neighbouring slices as channels: the probe weighs one pixel of one channel, and the series is flat
    lung but for a bright spot at one world point P. Integrated gradients (from flat lung) is non-zero only where
    the weighed pixel reads P: its peak lands on P, on P's slice, within half a voxel in x and y; so does
    Algorithm 1 around it, which inpaints each channel where that channel's map is high."""
    import SimpleITK as sitk

    from xaiexplain.data.geometry import ScanGeometry
    from xaiexplain.data.series import read_series
    from xaiexplain.io.dicom import write_dicom_series

    size, field_of_view, row, column = 40, 40.0, 24, 14
    bundle = module_bundle(tmp_path, PROBE_25D_MODEL, "PointProbe",
                           {"size": size, "row": row, "column": column, "channel": channel},
                           input_spec={"patch_size": size, "field_of_view_mm": field_of_view, "slices": 3},
                           output_spec={"form": "logit"})
    geometry = ScanGeometry(patient_id="PROBE3", study_instance_uid="1.2.826.0.1.3680043.8.498.80",
                            series_instance_uid="1.2.826.0.1.3680043.8.498.81", pixel_spacing=1.0,
                            slice_thickness=2.5, slice_z=tuple(-100.0 + 2.5 * k for k in range(9)), rows=80, columns=80)
    hu = np.full(geometry.shape, -850, np.int16)
    spot = (4, 40 + row - 20, 40 + column - 20)  # (slice, row, column) of P
    hu[spot[0], spot[1] - 1:spot[1] + 2, spot[2] - 1:spot[2] + 2] = 400
    ct = read_series(write_dicom_series(hu, geometry, tmp_path / "series"))
    p_lps = np.asarray(ct.image.TransformIndexToPhysicalPoint([spot[2], spot[1], spot[0]]))
    # the site: centred so that pixel (row, column) of channel `channel` of the patch at slice 4 - (channel - 1) is P
    site = ct.image.TransformContinuousIndexToPhysicalPoint((39.5, 39.5, 4 - (channel - 1)))
    methods = ["integrated-gradients", "iterative:integrated-gradients"]
    result = xaiexplain.explain_series(ct, [tuple(site)], bundle, methods, half_height_mm=6.0)
    stack = result.stacks[0]
    assert stack.channels.shape[1:] == (3, size, size) and stack.patches.shape[1:] == (size, size)
    for method in methods:
        volume = sitk.GetArrayFromImage(result.relevance[method])
        peak = np.unravel_index(np.argmax(np.abs(volume)), volume.shape)
        peak_lps = np.asarray(result.relevance[method].TransformIndexToPhysicalPoint(
            [int(peak[2]), int(peak[1]), int(peak[0])]))
        assert peak[0] == spot[0], (method, peak, spot)  # P's slice
        assert np.all(np.abs(peak_lps[:2] - p_lps[:2]) <= 0.5 + 1e-6), (method, peak_lps, p_lps)


def test_the_benchmark_runs_on_a_users_bundle_at_its_input_spec(small_bundle, tmp_path):
    from xaiexplain.evaluate.benchmark import run_benchmark

    bundle = small_bundle
    summary = run_benchmark(tmp_path / "out", quick=True, nodules=2, model=bundle.path, progress=False,
                            methods=["saliency", "grad-cam", "lrp", "cycle-am"])
    assert summary["patches"] == 2 and set(summary["methods"]) == {"saliency", "grad-cam"}
    assert "no rule for GELU at features.5" in summary["skipped"]["lrp"]
    assert "trained against" in summary["skipped"]["cycle-am"] or "classifier" in summary["skipped"]["cycle-am"]
    for method in ("saliency", "grad-cam"):
        entry = summary["methods"][method]
        assert entry["seconds_per_patch"] > 0 and entry.get("randomization_spearman") is not None, method
    assert (tmp_path / "out" / "benchmark.md").is_file()


def test_cycle_am_trains_for_a_users_classifier_and_explains_that_classifier_only(small_bundle, tmp_path):
    import os
    import subprocess
    import sys

    from xaiexplain.data.sources.phantom_patches import render_patch_set

    render_patch_set(tmp_path / "patches", patient_ids=["LIDC-IDRI-0078", "LIDC-IDRI-0001", "LIDC-IDRI-0003"],
                     progress=False, lung_patches_per_scan=0, size=48, field_of_view_mm=60.0)
    command = [sys.executable, "-m", "xaiexplain_train.cli", "cycle-am", "--widths", "4,8,8,16", "--batch-size", "2",
               "--device", "cpu", "--classifier", small_bundle.path, "--data", tmp_path / "patches", "--steps", "2",
               "--checkpoint-every", "2", "--sample-every", "2", "--out", tmp_path / "generators"]
    result = subprocess.run(list(map(str, command)), capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    generators = xaiexplain.load_bundle(tmp_path / "generators", role="cycle-am")
    assert generators.config["classifier"]["weights_sha256"] == small_bundle.fingerprint
    patches = nodule_patches(2, size=48)
    change = xaiexplain.explain(small_bundle, patches, "cycle-am", cycle_am=generators)
    assert change.shape == (2, 48, 48) and np.isfinite(change).all()
    with pytest.raises(XAIExplainError, match="trained against"):
        xaiexplain.explain("demo-classifier", nodule_patches(1), "cycle-am", cycle_am=generators)
    # a patch set of the shipped classifier's 64 px patches is refused for it, in one sentence
    render_patch_set(tmp_path / "patches-64", patient_ids=["LIDC-IDRI-0078"], progress=False, lung_patches_per_scan=0)
    wrong = [str(part) for part in command[:-1]] + [str(tmp_path / "wrong")]
    wrong[wrong.index(str(tmp_path / "patches"))] = str(tmp_path / "patches-64")
    refused = subprocess.run(wrong, capture_output=True, text=True)
    assert_one_line_error(refused, "holds patches of 64 x 64 px, but the classifier")


def test_explain_series_runs_a_users_2_5d_module_from_the_command_line(user_bundle, tmp_path):
    from helpers import CENTRE, small_series

    series, _ = small_series(tmp_path / "series", slices=8)
    result = run_cli("explain", "--series", series, "--point", CENTRE, "--model", user_bundle.path, "--method",
                     "saliency", "--method", "grad-cam", "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    written = json.loads((tmp_path / "out" / "nodules.json").read_text())
    assert {"saliency", "grad-cam"} <= set(written["nodules"][0]["methods"])
    refused = run_cli("explain", "--series", series, "--point", CENTRE, "--model", user_bundle.path, "--method",
                      "lrp", "--out", tmp_path / "refused")
    assert_one_line_error(refused, "lrp needs a chain of layers the LRP rules cover", "GELU at blocks.0.act",
                          "methods that work with this model: saliency, integrated-gradients, grad-cam")
    assert not (tmp_path / "refused").exists()


def test_the_slicer_batch_script_explains_with_a_users_2_5d_module(user_bundle, tmp_path):
    from helpers import assert_batch_script_explains

    assert_batch_script_explains(user_bundle.path, "saliency", tmp_path)



def test_a_2_5d_patch_set_holds_each_patchs_neighbouring_slices_as_channels(tmp_path):
    from xaiexplain.data.lung_patches import is_nodule_free_lung
    from xaiexplain.data.patch_set import load_lung_patches, load_patch_set
    from xaiexplain.data.sources.phantom_patches import render_patch_set

    for slices in (1, 3):
        render_patch_set(tmp_path / f"set-{slices}", patient_ids=["LIDC-IDRI-0078"], progress=False,
                         lung_patches_per_scan=4, size=48, field_of_view_mm=60.0, slices=slices)
    one, rows, _ = load_patch_set(tmp_path / "set-1")
    three, _, summary = load_patch_set(tmp_path / "set-3")
    assert summary["slices"] == 3 and three["images"].shape == (len(one["images"]), 3, 48, 48)
    np.testing.assert_array_equal(three["images"][:, 1], one["images"])  # the patch's own slice in the middle
    first = rows[0]["first_patch"]
    np.testing.assert_array_equal(three["images"][first + 1, 0], one["images"][first])  # the slice below it
    np.testing.assert_array_equal(three["nodule_mask"], one["nodule_mask"])
    # nodule-free lung patches with the same channels: the same draws as the one-slice set where all three
    # slices are lung, each channel nodule-free
    lung_one, lung_three = load_lung_patches(tmp_path / "set-1"), load_lung_patches(tmp_path / "set-3")
    assert lung_three["images"].shape[1:] == (3, 48, 48) and summary["lung_patches"]["per_scan"] == 4
    assert len(lung_three["images"]) >= 2
    assert all(is_nodule_free_lung(channel) for patch in lung_three["images"] for channel in patch)
    assert not np.array_equal(lung_three["images"][:, 0], lung_three["images"][:, 1])  # neighbours, not copies
    for patch, centre in zip(lung_three["images"], lung_three["center_lps"]):
        same = np.flatnonzero(np.all(np.isclose(lung_one["center_lps"], centre), axis=1))
        if len(same):
            np.testing.assert_array_equal(patch[1], lung_one["images"][same[0]])
