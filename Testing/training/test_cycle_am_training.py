"""Training, evaluating and using cycle-consistent activation maximization."""
import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import xaiexplain
from safetensors.torch import load_file
from xaiexplain.data import lidc, series
from xaiexplain.data.patch_set import held_out_patients, load_patch_set
from xaiexplain.data.sources.phantom_patches import render_patch_set
from xaiexplain.data.sources.phantom_series import write_phantom_series
from xaiexplain.explainers.counterfactuals import counterfactuals

TINY = ["--widths", "4,8,8,16", "--batch-size", "4", "--device", "cpu", "--classifier", "demo-classifier"]


def train(*args):
    command = [sys.executable, "-m", "xaiexplain_train.cli", "cycle-am", *TINY, *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def tiny_runs(tiny_patch_set, tmp_path_factory):
    root = tmp_path_factory.mktemp("cycle-am")
    common = ["--data", tiny_patch_set, "--checkpoint-every", 2, "--sample-every", 4]
    train(*common, "--out", root / "whole", "--steps", 4)
    train(*common, "--out", root / "split", "--steps", 2)
    train(*common, "--out", root / "split", "--steps", 4, "--resume")
    return root


def test_resume_reproduces_the_uninterrupted_run(tiny_runs):
    whole = load_file(str(tiny_runs / "whole.checkpoint" / "checkpoint.safetensors"))
    split = load_file(str(tiny_runs / "split.checkpoint" / "checkpoint.safetensors"))
    assert whole.keys() == split.keys()
    for name in whole:
        torch.testing.assert_close(split[name], whole[name], rtol=0, atol=0, msg=name)
    history = json.loads((tiny_runs / "whole.checkpoint" / "checkpoint.json").read_text())["history"]
    assert [row["step"] for row in history] == [2, 4]
    assert all(np.isfinite(row[name]) for row in history for name in ("cycle", "similarity", "adversarial",
                                                                       "activation", "discriminators"))


def test_bundle_round_trip_curves_and_samples(tiny_runs):
    bundle = xaiexplain.load_bundle(tiny_runs / "whole", role="cycle-am")
    assert bundle.config["kind"] == "cycle-am" and bundle.config["arguments"]["widths"] == [4, 8, 8, 16]
    checkpoint = load_file(str(tiny_runs / "whole.checkpoint" / "checkpoint.safetensors"))
    for name, value in bundle.model.plus.state_dict().items():
        torch.testing.assert_close(value, checkpoint[f"plus.{name}"])
    assert (tiny_runs / "whole" / "loss_curves.csv").read_text().startswith("step,discriminators,cycle")
    assert (tiny_runs / "whole" / "loss_curves.png").stat().st_size > 5000
    assert (tiny_runs / "whole.samples" / "step_0000004.png").exists()


def test_cycle_am_maps_and_counterfactual_series(tiny_runs, tmp_path):
    """The counterfactual volumes are G+(x) / G-(x) on the part of the series' grid the nodules' patches
    cover, not two full float32 copies of the CT (32 MB each, compressed, on this phantom)."""
    written = write_phantom_series(lidc.find_scan_by_key("LIDC-IDRI-0078"), tmp_path / "phantom", seed=1)
    out = tmp_path / "explained"
    command = [sys.executable, "-m", "xaiexplain.apps.cli", "explain", "--series", str(written.series_folder), "--lidc",
               "--method", "cycle-am", "--cycle-am", str(tiny_runs / "whole"), "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    image = series.read_series(written.series_folder).image
    original = sitk.GetArrayFromImage(image)
    for name in ("relevance_cycle-am", "labels_cycle-am"):
        output = sitk.ReadImage(str(out / f"{name}.nrrd"))
        assert output.GetSize() == image.GetSize()
        np.testing.assert_allclose(output.GetOrigin(), image.GetOrigin(), atol=1e-4)
    summary = json.loads((out / "nodules.json").read_text())
    for kind in ("malignant", "benign"):
        counterfactual = sitk.ReadImage(str(out / f"counterfactual_{kind}.nrrd"))
        np.testing.assert_allclose(counterfactual.GetSpacing(), image.GetSpacing(), atol=1e-6)
        np.testing.assert_allclose(counterfactual.GetDirection(), image.GetDirection())
        # on the series' grid: its first voxel is a voxel of the series
        start = np.asarray(image.TransformPhysicalPointToContinuousIndex(counterfactual.GetOrigin()))
        np.testing.assert_allclose(start, np.round(start), atol=1e-4)
        start = np.round(start).astype(int)
        size = np.asarray(counterfactual.GetSize())
        assert np.all(start >= 0) and np.all(start + size <= image.GetSize())
        assert np.prod(size) < 0.1 * np.prod(image.GetSize())
        values = sitk.GetArrayFromImage(counterfactual)
        crop = original[start[2]:start[2] + size[2], start[1]:start[1] + size[1], start[0]:start[0] + size[0]]
        changed = values != crop
        assert changed.any()
        # it reaches every slice of every nodule's patches, and outside those slices it is the series itself
        covered = np.zeros(crop.shape[0], bool)
        for row in summary["nodules"]:
            for z in row["slice_z"]:
                k = image.TransformPhysicalPointToIndex((0.0, 0.0, z))[2] - start[2]
                assert 0 <= k < len(covered)
                covered[k] = True
        assert not changed[~covered].any()
    for row in summary["nodules"]:
        entry = row["methods"]["cycle-am"]
        assert 0 <= entry["counterfactual_malignant_probability"] <= 1
        assert 0 <= entry["counterfactual_benign_probability"] <= 1


def test_shipped_demo_bundle_flips_held_out_decisions(tmp_path):
    """Paper 1, 4.1 on held-out phantom nodules (test-split patients): mean p(G+(x)) >= 0.80,
    mean p(G-(x)) <= 0.30, SSIM(x, G+/-(x)) >= 0.80."""
    from xaiexplain.evaluate.classifier_metrics import domain_transfer
    from xaiexplain.models import cycle_am

    render_patch_set(tmp_path / "held-out", seed=0, patient_ids=held_out_patients(seed=0)[:20], progress=False)
    arrays, _, _ = load_patch_set(tmp_path / "held-out")
    classifier = xaiexplain.load_bundle()
    pair = counterfactuals(classifier, arrays["images"].astype(np.float32))
    x = classifier.to_tensor(arrays["images"])
    with torch.no_grad():
        ssim_plus = cycle_am.ssim_per_image(x, classifier.to_tensor(pair.malignant)).numpy()
        ssim_minus = cycle_am.ssim_per_image(x, classifier.to_tensor(pair.benign)).numpy()
    result = domain_transfer(classifier.probability(x), pair.malignant_probability, pair.benign_probability,
                             ssim_plus, ssim_minus, classifier.threshold)
    assert result["probability"]["G+(x)"]["mean"] >= 0.80, result["probability"]
    assert result["probability"]["G-(x)"]["mean"] <= 0.30, result["probability"]
    assert result["ssim"]["x, G+(x)"]["mean"] >= 0.80 and result["ssim"]["x, G-(x)"]["mean"] >= 0.80


def test_two_processes_with_torchrun(tiny_patch_set, tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
               "xaiexplain_train.cli", "cycle-am", *TINY, "--data", str(tiny_patch_set), "--steps", "2",
               "--checkpoint-every", "2", "--out", str(tmp_path / "ddp")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((tmp_path / "ddp" / "config.json").read_text())
    assert config["provenance"]["processes"] == 2 and config["kind"] == "cycle-am"
