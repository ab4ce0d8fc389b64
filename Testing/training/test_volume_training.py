"""Issue 27: a 3D classifier end to end. A 3D phantom patch set (one volume per nodule with its 3D masks,
nodule-free lung volumes beside them), paper 1's ConvNet with 3D convolutions trained on it for seconds by
``xaiexplain-train classifier``, its bundle explaining a phantom series with every method it allows."""
import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import TINY_SET_PATIENTS, TREE_PHANTOM_PATIENTS
from helpers import xaiexplain as run_cli
from xaiexplain.data.patch_set import SPLITS, load_lung_patches, load_patch_set, write_patch_set

# 2.5 mm between planes, 1.4 mm in the plane: a nodule and its surroundings
SIZE, FIELD_OF_VIEW = [16, 32, 32], [40.0, 45.0, 45.0]


@pytest.fixture(scope="module")
def volume_set(tmp_path_factory):
    """The 3D patch set of a few patients, split by nodule so that each split holds both labels."""
    from xaiexplain.data.sources.phantom_patches import render_patch_set

    root = tmp_path_factory.mktemp("volumes")
    summary = render_patch_set(root / "rendered", patient_ids=TINY_SET_PATIENTS[:6] + ["LIDC-IDRI-0390"],
                               progress=False, size=SIZE, field_of_view_mm=FIELD_OF_VIEW, spatial_dims=3,
                               lung_patches_per_scan=3)
    arrays, nodules, summary = load_patch_set(root / "rendered")
    for label in ("benign", "malignant"):
        of_label = [n for n, row in enumerate(nodules) if row["label"] == label]
        for position, n in enumerate(of_label):
            nodules[n]["split"] = SPLITS[position] if position < 3 else "train"
            arrays["split"][nodules[n]["first_patch"]] = SPLITS.index(nodules[n]["split"])
    lung = load_lung_patches(root / "rendered")
    lung["split"] = (np.arange(len(lung["split"])) % len(SPLITS)).astype(np.int8)
    write_patch_set(root / "set", arrays, nodules, summary, lung)
    return root / "set"


@pytest.fixture(scope="module")
def volume_classifier(volume_set, tmp_path_factory):
    out = tmp_path_factory.mktemp("classifier3d") / "bundle"
    command = [sys.executable, "-m", "xaiexplain_train.cli", "classifier", "--device", "cpu", "--bootstrap", "20",
               "--widths", "4,8,8,16", "--batch-size", "16", "--epochs", "3", "--data", str(volume_set),
               "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def volume_generators(volume_set, volume_classifier, tmp_path_factory):
    """3D cycle-am (3D U-Nets and PatchGANs) trained for a few steps against the 3D classifier."""
    out = tmp_path_factory.mktemp("cycle-am-3d") / "bundle"
    command = [sys.executable, "-m", "xaiexplain_train.cli", "cycle-am", "--device", "cpu", "--widths", "4,8,8,16",
               "--batch-size", "2", "--steps", "4", "--checkpoint-every", "2", "--sample-every", "4",
               "--classifier", str(volume_classifier), "--data", str(volume_set), "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_a_3d_patch_set_holds_one_volume_per_nodule_with_its_3d_masks(volume_set):
    arrays, nodules, summary = load_patch_set(volume_set)
    assert summary["spatial_dims"] == 3 and summary["patch_size"] == SIZE
    assert arrays["images"].shape == (len(nodules), *SIZE) and arrays["nodule_mask"].shape == (len(nodules), *SIZE)
    assert all(row["patch_count"] == 1 for row in nodules)
    centre = (np.asarray(SIZE) - 1) / 2
    for mask in arrays["nodule_mask"]:  # about the consensus centroid: the mask's centre at the volume's
        assert mask.any() and np.all(np.abs(np.argwhere(mask).mean(0) - centre) < 1.5)
    lung = load_lung_patches(volume_set)
    assert lung["images"].shape[1:] == tuple(SIZE) and len(lung["images"]) >= 6
    assert np.all(np.median(lung["images"].reshape(len(lung["images"]), -1), axis=1) < -700)


def test_a_3d_classifier_explains_a_phantom_series_with_every_method_it_allows(volume_classifier, volume_generators,
                                                                              tmp_path):
    from xaiexplain import load_bundle
    from xaiexplain.data import lidc
    from xaiexplain.data.series import read_series
    from xaiexplain.data.sources.phantom_series import write_phantom_series
    from xaiexplain.explainers import registry

    bundle = load_bundle(volume_classifier)
    assert bundle.input.spatial_dims == 3 and bundle.patch_shape == tuple(SIZE)
    assert bundle.config["metrics"]["validation_auc"] is not None
    methods = [m for m in registry.base_methods() if not registry.get(m).refusal(bundle)]
    assert set(methods) == set(registry.base_methods())  # paper 1's ConvNet: all, cycle-am with its 3D generators
    written = write_phantom_series(lidc.find_scan_by_key(TREE_PHANTOM_PATIENTS[0]), tmp_path / "phantom", seed=0)
    arguments = [a for m in methods for a in ("--method", m)]
    result = run_cli("explain", "--series", written.series_folder, "--lidc", "--model", volume_classifier,
                     *arguments, "--cycle-am", volume_generators, "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "nodules.json").read_text())
    ct = read_series(written.series_folder)
    for row in summary["nodules"]:
        assert set(row["methods"]) == set(methods) and row["volume"]["patch_size"] == SIZE
        assert 0 <= row["probability"] <= 1
    for method in methods:
        relevance = sitk.ReadImage(str(tmp_path / "out" / summary["files"][method]["relevance"]))
        labels = sitk.ReadImage(str(tmp_path / "out" / summary["files"][method]["labels"]))
        for image in (relevance, labels):  # the series' geometry
            assert image.GetSize() == ct.image.GetSize() and image.GetOrigin() == ct.image.GetOrigin()
            assert np.allclose(image.GetSpacing(), ct.image.GetSpacing())
        assert np.isfinite(sitk.GetArrayViewFromImage(relevance)).all()


@pytest.mark.parametrize("method", ["saliency", "grad-cam"])
def test_algorithm_1_on_volumes_augments_non_negative_evidence_with_bounded_masks(volume_classifier, volume_set,
                                                                                method):
    """Paper 2's Algorithm 1 on the volumes the 3D classifier calls malignant: every M_t is evidence for the
    decision (>= 0), Otsu's mask over the volume is a bounded share of it, the inpainting (Navier-Stokes, plane
    by plane) changes only masked voxels, the augmented map is the decayed sum, and each volume stops once
    its probability falls below the threshold or at T."""
    import xaiexplain
    from xaiexplain.explainers import iterative

    bundle = xaiexplain.load_bundle(volume_classifier)
    arrays, _, _ = load_patch_set(volume_set)
    images = arrays["images"].astype(np.float32)
    called = np.flatnonzero(bundle.predict(images) >= bundle.threshold)[:6]
    assert len(called)
    augmented, result = xaiexplain.explain(bundle, images[called], "iterative:" + method, max_iterations=6,
                                           return_details=True)
    assert augmented.shape == (len(called), *SIZE)
    for n, passes in enumerate(result.passes):
        assert 1 <= len(passes) <= 5
        assert all(p.probability >= bundle.threshold for p in passes[:-1])
        previous = images[called[n]]
        for p in passes:
            assert p.relevance.shape == tuple(SIZE) and (p.relevance >= 0).all()
            assert p.mask.mean() <= 0.5 and p.mask.any() == (np.ptp(p.relevance) > 0)  # empty: a map of zeros
            assert not ((p.inpainted != previous) & ~p.mask).any()
            previous = p.inpainted
        expected = sum((np.exp(-iterative.DECAY * p.t) * p.relevance for p in passes), np.zeros(SIZE))
        np.testing.assert_allclose(augmented[n], expected, rtol=1e-5, atol=1e-7)
    masks = [p.mask.mean() for passes in result.passes for p in passes]
    assert np.median(masks) <= 0.25, np.median(masks)


def test_phantom_renders_a_3d_patch_set_from_the_command_line(tmp_path):
    from helpers import assert_one_line_error

    result = run_cli("phantom", "--patches", "--scans", "LIDC-IDRI-0078", "--spatial-dims", "3", "--patch-size",
                     "8,16,16", "--field-of-view-mm", "20,24,24", "--lung-patches", "0", "--out", tmp_path / "set")
    assert result.returncode == 0, result.stderr
    arrays, nodules, summary = load_patch_set(tmp_path / "set")
    assert arrays["images"].shape == (len(nodules), 8, 16, 16) and summary["field_of_view_mm"] == [20.0, 24.0, 24.0]
    flat = run_cli("phantom", "--patches", "--scans", "LIDC-IDRI-0078", "--patch-size", "8,16,16", "--out",
                   tmp_path / "flat")
    assert_one_line_error(flat, "axial patches have one size and one field of view")
    assert not (tmp_path / "flat").exists()


def test_the_benchmark_measures_a_3d_classifier_on_held_out_volumes(volume_classifier, volume_generators, tmp_path):
    """Localization against the 3D nodule masks, deletion and insertion over the volume, the randomization
    check, Algorithm 1, 3D cycle-am's counterfactual validity and the cost, all on one volume per held-out nodule
    at the model's spec; the shipped 2D generators are skipped with the reason."""
    from xaiexplain.evaluate.benchmark import held_out_patches, run_benchmark

    data = held_out_patches(3, size=SIZE, field_of_view_mm=FIELD_OF_VIEW, spatial_dims=3)
    assert data["images"].shape == (3, *SIZE) and data["nodule_mask"].shape == (3, *SIZE)
    summary = run_benchmark(tmp_path / "out", quick=True, model=volume_classifier, progress=False, data=data,
                            methods=["saliency", "grad-cam", "lrp", "iterative:saliency", "cycle-am"])
    assert set(summary["methods"]) == {"saliency", "grad-cam", "lrp", "iterative:saliency"}
    # the shipped generators belong to the shipped 2D classifier
    assert "was trained against another classifier" in summary["skipped"]["cycle-am"]
    with_generators = run_benchmark(tmp_path / "cycle-am", quick=True, model=volume_classifier, progress=False,
                                    data=data, methods=["cycle-am"], cycle_am=volume_generators)
    transfer = with_generators["methods"]["cycle-am"]["counterfactuals"]
    assert transfer["nodules"] == 3 and 0 < transfer["per_nodule"]["ssim"]["x, G+(x)"]["mean"] <= 1
    for method, entry in summary["methods"].items():
        assert entry["ratio_to_input_gradient"] > 0 and entry["peak_memory_mb"] is not None, method
        if method.startswith("iterative:"):
            continue
        assert entry["randomization_spearman"] is not None, method
        if summary["decided_malignant"] and entry["nodule"]["patches"]:
            assert 0 <= entry["nodule"]["mass_accuracy"] <= 1 and 0 <= entry["deletion_auc"] <= 1, method
    assert summary["whole_series"]["nodules"] >= 1 and (tmp_path / "out" / "benchmark.md").is_file()


def test_on_the_real_lidc_series_the_3d_integrated_gradients_peak_lies_in_the_readers_consensus(
        volume_classifier, real_series_folder):
    """The real LIDC-IDRI-0001 series (where present): the 3D classifier trained on the phantom reads one
    volume about the readers' nodule, and the peak of integrated gradients' evidence lies in their consensus."""
    import xaiexplain
    from xaiexplain.data.series import read_series

    ct = read_series(real_series_folder)
    result = xaiexplain.explain_series(ct, "lidc", volume_classifier, ["integrated-gradients"])
    [row] = [r for r in result.nodules if r.get("lidc", {}).get("label") == "malignant"]
    entry = row["methods"]["integrated-gradients"]
    assert row["volume"]["patch_size"] == SIZE
    assert entry["peak_in_consensus"], (row["probability"], entry["peak_distance_to_consensus_mm"])


def test_an_archive_is_explained_with_a_3d_classifier_and_its_peaks_measured_against_the_consensus(
        volume_classifier, lidc_download_tree, tmp_path):
    """`explain --lidc-root` with a 3D model: one row per annotated nodule of the download, each with its 3D
    peak's distance to the readers' consensus (0 exactly when the peak lies inside it)."""
    import csv

    from conftest import tree_patients
    from xaiexplain.io.archive_explanation import explain_archive

    summary = explain_archive(lidc_download_tree, tmp_path / "out", ["integrated-gradients"], model=volume_classifier,
                              device="cpu", progress=False)
    assert summary["series_in_archive"] == len(tree_patients())
    with open(tmp_path / "out" / "nodules.csv", newline="") as table:
        rows = list(csv.DictReader(table))
    assert {row["patient_id"] for row in rows} == tree_patients() and rows
    for row in rows:
        assert row["method"] == "integrated-gradients" and row["peak_in_consensus"] in ("yes", "no")
        assert (row["peak_in_consensus"] == "yes") == (float(row["peak_distance_to_consensus_mm"]) == 0)


def test_3d_cycle_am_trains_and_its_bundle_holds_3d_generators(volume_generators, volume_classifier):
    """3D U-Nets (3 x 3 x 3 convolutions, 3D batch norm) trained against the 3D classifier: finite losses of
    every term (3D MS-SSIM in the cycle loss), the classifier's fingerprint recorded, a sample grid of middle
    planes, and G+(x), G-(x) volumes of the classifier's patch shape within the CT's range."""
    import torch
    import xaiexplain

    bundle = xaiexplain.load_bundle(volume_generators, role="cycle-am")
    assert bundle.config["arguments"]["spatial_dims"] == 3 and bundle.input.spatial_dims == 3
    assert bundle.patch_shape == tuple(SIZE)
    assert any(isinstance(m, torch.nn.Conv3d) for m in bundle.model.modules())
    assert not any(isinstance(m, torch.nn.Conv2d) for m in bundle.model.modules())
    assert bundle.config["classifier"]["weights_sha256"] == xaiexplain.load_bundle(volume_classifier).fingerprint
    losses = bundle.config["training_losses"]
    assert all(np.isfinite(losses[name]) for name in ("discriminators", "cycle", "similarity", "floor", "activation"))
    assert (volume_generators.parent / "bundle.samples" / "step_0000004.png").stat().st_size > 5000
    from xaiexplain.explainers.counterfactuals import counterfactuals

    volumes = np.full((2, *SIZE), -800.0, np.float32)
    volumes[:, 6:10, 12:20, 12:20] = 40.0
    pair = counterfactuals(xaiexplain.load_bundle(volume_classifier), volumes, bundle)
    for generated in (pair.malignant, pair.benign):
        assert generated.shape == volumes.shape and generated.min() >= -1024 and generated.max() <= 3071
    assert ((pair.malignant_probability >= 0) & (pair.malignant_probability <= 1)).all()


def test_3d_cycle_am_explains_a_series_with_counterfactual_volumes_in_its_geometry(volume_generators,
                                                                                   volume_classifier, tmp_path):
    from xaiexplain.data import lidc
    from xaiexplain.data.series import read_series
    from xaiexplain.data.sources.phantom_series import write_phantom_series

    written = write_phantom_series(lidc.find_scan_by_key(TREE_PHANTOM_PATIENTS[0]), tmp_path / "phantom", seed=0)
    result = run_cli("explain", "--series", written.series_folder, "--lidc", "--model", volume_classifier,
                     "--method", "cycle-am", "--cycle-am", volume_generators, "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "nodules.json").read_text())
    image = read_series(written.series_folder).image
    relevance = sitk.ReadImage(str(tmp_path / "out" / summary["files"]["cycle-am"]["relevance"]))
    assert relevance.GetSize() == image.GetSize() and relevance.GetOrigin() == image.GetOrigin()
    assert np.abs(sitk.GetArrayViewFromImage(relevance)).max() > 0
    original = sitk.GetArrayFromImage(image)
    for side in ("malignant", "benign"):
        counterfactual = sitk.ReadImage(str(tmp_path / "out" / f"counterfactual_{side}.nrrd"))
        np.testing.assert_allclose(counterfactual.GetSpacing(), image.GetSpacing(), atol=1e-6)
        start = np.asarray(image.TransformPhysicalPointToContinuousIndex(counterfactual.GetOrigin()))
        np.testing.assert_allclose(start, np.round(start), atol=1e-4)  # on the series' grid
        start, size = np.round(start).astype(int), np.asarray(counterfactual.GetSize())
        crop = original[start[2]:start[2] + size[2], start[1]:start[1] + size[1], start[0]:start[0] + size[0]]
        changed = sitk.GetArrayViewFromImage(counterfactual) != crop
        assert changed.any()
        # within the nodules' volumes (40 x 45 x 45 mm about each centre) and nowhere else
        lps = np.stack(np.meshgrid(*[np.arange(n) for n in size[::-1]], indexing="ij"), -1)[changed][:, ::-1] + start
        points = np.array([image.TransformContinuousIndexToPhysicalPoint([float(v) for v in index]) for index in lps])
        centres = np.array([row["center_lps"] for row in summary["nodules"]])
        half = np.array(FIELD_OF_VIEW[::-1]) / 2 + np.array(image.GetSpacing())
        assert np.all(np.any(np.all(np.abs(points[:, None] - centres[None]) <= half, axis=-1), axis=1))
    for row in summary["nodules"]:
        assert 0 <= row["methods"]["cycle-am"]["counterfactual_malignant_probability"] <= 1


def test_3d_cycle_am_refuses_another_classifier(volume_generators, volume_classifier, volume_set, tmp_path):
    """Generators belong to the classifier they were trained against: a 3D classifier with other weights is
    refused by its fingerprint, the shipped 2D classifier by its patch shape (with the override too)."""
    import torch
    import xaiexplain
    from helpers import assert_one_line_error
    from xaiexplain.errors import XAIExplainError
    from xaiexplain.explainers.counterfactuals import generators_for

    other = xaiexplain.load_bundle(volume_classifier)
    with torch.no_grad():
        next(other.model.parameters()).add_(1e-3)
    with pytest.raises(XAIExplainError, match="trained against another classifier"):
        generators_for(other, volume_generators)
    assert generators_for(other, volume_generators, allow_other_classifier=True).patch_shape == tuple(SIZE)
    with pytest.raises(XAIExplainError, match="makes patches of 16 x 32 x 32 voxels"):
        generators_for(xaiexplain.load_bundle(), volume_generators, allow_other_classifier=True)
    refused = run_cli("explain", "--series", tmp_path, "--point", "0,0,0", "--method", "cycle-am", "--cycle-am",
                      volume_generators, "--out", tmp_path / "refused")
    assert_one_line_error(refused, "was trained against another classifier", "not demo-classifier")
    assert not (tmp_path / "refused").exists()


def test_evaluate_cycle_am_measures_3d_counterfactuals_on_a_3d_set(volume_generators, volume_classifier,
                                                                    volume_set, tmp_path):
    command = [sys.executable, "-m", "xaiexplain_train.cli", "evaluate-cycle-am", "--classifier",
               str(volume_classifier), "--cycle-am", str(volume_generators), "--data", str(volume_set),
               "--split", "validation", "--out", str(tmp_path / "evaluation")]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    evaluation = json.loads((tmp_path / "evaluation" / "evaluation.json").read_text())
    assert evaluation["nodules"] == evaluation["patches"] >= 2  # one volume per nodule
    for name, entry in evaluation["per_nodule"]["ssim"].items():
        assert 0 < entry["mean"] <= 1, name


def test_the_slicer_batch_script_explains_with_the_trained_3d_classifier(volume_classifier, tmp_path):
    from helpers import assert_batch_script_explains

    assert_batch_script_explains(volume_classifier, "integrated-gradients", tmp_path)
