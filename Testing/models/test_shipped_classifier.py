"""Issue 29: the shipped classifier calls empty lung benign, so that its maps and references mean something.
Each test failed on the classifier shipped before (trained on nodule patches alone: p(flat -850 HU) 0.833)."""
import numpy as np
import pytest
from scipy import ndimage

from xaiexplain.data.lung_patches import axial_planes, nodule_boxes_lps, sample_lung_patches
from xaiexplain.data.patch_set import held_out_patients, load_lung_patches, load_patch_set
from xaiexplain.data.sources.phantom_patches import render_patch_set
from xaiexplain.evaluate.faithfulness import LUNG_HU
from xaiexplain.models.bundles import load_bundle

# test-split patients rendered for these tests: about 30 nodules and 8 lung patches per scan
HELD_OUT_PATIENTS = 16


@pytest.fixture(scope="module")
def classifier():
    return load_bundle("demo-classifier")


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    folder = tmp_path_factory.mktemp("held-out") / "patches"
    render_patch_set(folder, seed=0, patient_ids=held_out_patients(0)[:HELD_OUT_PATIENTS], progress=False)
    arrays, _, _ = load_patch_set(folder)
    return arrays, load_lung_patches(folder)


@pytest.mark.parametrize("hu", [-1000.0, -950.0, -900.0, -850.0])
def test_flat_lung_and_air_are_benign(classifier, hu):
    # before: -850 HU 0.833 and -900 HU 0.650 against the threshold 0.772
    assert classifier.flat_probability(hu) < classifier.threshold


def test_nodule_free_phantom_lung_is_benign(classifier, held_out):
    _, lung = held_out
    assert len(lung["images"]) >= 100 and set(lung["split"]) == {2}
    called = classifier.predict(lung["images"].astype(np.float32)) >= classifier.threshold
    assert called.mean() <= 0.05, f"{called.sum()} of {len(called)} nodule-free lung patches called malignant"


def test_erasing_the_nodule_removes_the_malignant_decision(classifier, held_out):
    arrays, _ = held_out
    images = arrays["images"].astype(np.float32)
    called = classifier.predict(images) >= classifier.threshold
    assert called.sum() >= 50
    lesion = arrays["nodule_mask"] | arrays["spicule_mask"] | arrays["calcification_mask"]
    erased = images[called].copy()
    for n, mask in enumerate(lesion[called]):
        erased[n][ndimage.binary_dilation(mask, iterations=2)] = LUNG_HU
    turned = classifier.predict(erased) < classifier.threshold
    # before: 0-13 % turned benign
    assert turned.mean() >= 0.90, f"{turned.sum()} of {len(turned)} turned benign"


def test_inpainting_the_nodule_as_algorithm_1_does_removes_the_decision(classifier, held_out):
    """Issue 25, item 8: Algorithm 1's premise on the benchmark. Inpainting a whole nodule (its mask dilated 4
    px) with Algorithm 1's Navier-Stokes left median p 0.92 and only 8 % of the patches below the threshold."""
    from xaiexplain.explainers.iterative import inpaint

    arrays, _ = held_out
    images = arrays["images"].astype(np.float32)
    called = classifier.predict(images) >= classifier.threshold
    lesion = arrays["nodule_mask"] | arrays["spicule_mask"] | arrays["calcification_mask"]
    inpainted = np.stack([inpaint(image, ndimage.binary_dilation(mask, iterations=4))
                          for image, mask in zip(images[called], lesion[called])])
    below = classifier.predict(inpainted) < classifier.threshold
    # the shipped classifier: 88 of 111 (0.79)
    assert below.mean() >= 0.75, f"{below.sum()} of {len(below)} below the threshold"


def test_the_recorded_metrics_keep_the_nodule_auc_and_report_lung_specificity(classifier):
    metrics = classifier.config["metrics"]
    assert metrics["test_patches"]["auc"]["value"] >= 0.930 - 0.02
    lung = metrics["nodule_free_lung_specificity"]["test"]
    assert lung["patches"] > 500 and lung["value"] >= 0.95
    check = classifier.config["reference_check"]
    assert check["flat"]["flat lung -850 HU"]["below_threshold"]
    assert check["flat"]["flat lung -850 HU"]["probability"] == pytest.approx(classifier.flat_probability(-850.0),
                                                                              abs=1e-5)


def test_real_nodule_free_lung_is_benign_and_the_real_nodule_malignant(classifier, real_series_folder):
    from xaiexplain.data.nodule_sites import lidc_sites
    from xaiexplain.data.patches import extract_stack
    from xaiexplain.data.series import read_series

    ct = read_series(real_series_folder)
    sites = lidc_sites(ct)
    boxes = nodule_boxes_lps([site.lidc for site in sites], sites[0].geometry)
    patches, centres = sample_lung_patches(axial_planes(ct.image), ct.image.GetSize()[2], boxes, 30,
                                           np.random.default_rng(0))
    assert len(patches) == 30
    called = classifier.predict(patches) >= classifier.threshold
    # before: 14 of 30 in the draw, 21 of 30 in this one
    assert called.sum() <= 3, f"{called.sum()} of 30 nodule-free lung patches of the real series called malignant"
    nodule = sites[0]
    stack = extract_stack(ct.image, nodule.center_lps, nodule.z_range)
    assert classifier.predict(stack.patches).mean() >= classifier.threshold
