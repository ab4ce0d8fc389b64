"""Issue 26: a user's 2.5D module (residual blocks with GELU, a dict with one logit, 96 px / 60 mm, three
slices as channels), trained for seconds on the phantom's 2.5D patches, with nodule-free lung patches of the same
spec beside them: explained through the contract, its maps point at the nodule far above chance. With the logit
taken from the features' means over the patch instead, saliency's peaks fall in the lung's texture (README,
"Explain your own model")."""
import numpy as np
import pytest
from scipy import ndimage, stats

import xaiexplain
from user_models import USER_MODEL, module_bundle, train_user_module
from xaiexplain.data.patch_set import load_patch_set
from xaiexplain.evaluate.localization import pointing_game
from xaiexplain.explainers import registry
from xaiexplain.models.making import make_bundle

# Half the TINY set's patients and seven with several benign nodules: without them the set holds ten times more
# malignant patches than benign ones (large nodules span more slices), and the model learns little but "malignant".
PATIENTS = ["LIDC-IDRI-0078", "LIDC-IDRI-0001", "LIDC-IDRI-0003", "LIDC-IDRI-0005", "LIDC-IDRI-0010",
            "LIDC-IDRI-0390", "LIDC-IDRI-0124", "LIDC-IDRI-0435", "LIDC-IDRI-0855", "LIDC-IDRI-0171",
            "LIDC-IDRI-0188", "LIDC-IDRI-0751"]
SPEC = {"patch_size": 96, "field_of_view_mm": 60.0, "slices": 3}
OUTPUT = {"form": "logit", "entry": "logit"}
TOLERANCE_PX = 2


@pytest.fixture(scope="module")
def patches(tmp_path_factory):
    from xaiexplain.data.sources.phantom_patches import render_patch_set

    folder = tmp_path_factory.mktemp("user-2.5d-patches")
    render_patch_set(folder, patient_ids=PATIENTS, progress=False, size=96, field_of_view_mm=60.0, slices=3)
    return folder


def trained_module(patches, folder, head):
    """The user's module with this head trained 1200 seeded steps (about 25 s on one thread), made a bundle
    from its weights."""
    arguments = {"width": 8, "head": head}
    untrained = module_bundle(folder / "init", USER_MODEL, "UserNet", arguments, input_spec=SPEC, output_spec=OUTPUT)
    weights = train_user_module(untrained, patches, folder / "trained.safetensors")
    return make_bundle(folder / "bundle", python=folder / "init" / "model_source.py", class_name="UserNet",
                       arguments=arguments, weights=weights, input_spec=SPEC, output_spec=OUTPUT)


@pytest.fixture(scope="module")
def trained(patches, tmp_path_factory):
    return trained_module(patches, tmp_path_factory.mktemp("user-2.5d"), "dense"), patches


def pointing(bundle, images, masks, method):
    """Hits of the pointing game (the peak of the decision's evidence on the patch's own slice, the middle
    channel, within TOLERANCE_PX of the nodule) and the chance of a hit: the dilated masks' mean area."""
    maps = xaiexplain.explain(bundle, images, method)
    maps = maps[:, 1] if maps.ndim == 4 else maps
    evidence = registry.get(method).map_kind.for_decision(maps, True)
    hits = int(np.nansum([pointing_game(e, m, TOLERANCE_PX) for e, m in zip(evidence, masks)]))
    chance = float(np.mean([ndimage.binary_dilation(m, iterations=TOLERANCE_PX).mean() for m in masks]))
    return hits, chance


def test_the_2_5d_patch_set_holds_lung_patches_the_model_calls_benign(trained):
    from xaiexplain.data.patch_set import load_lung_patches

    bundle, patches = trained
    lung = load_lung_patches(patches)
    assert lung["images"].shape[1:] == (3, 96, 96) and len(lung["images"]) >= 40
    assert np.median(bundle.predict(lung["images"].astype(np.float32))) < 0.2
    assert bundle.flat_probability(-850.0) < bundle.threshold  # integrated gradients' reference is benign


def malignant_patches_called_malignant(bundle, patches):
    arrays, _, _ = load_patch_set(patches)
    images = arrays["images"].astype(np.float32)
    called = np.flatnonzero((bundle.predict(images) >= bundle.threshold) & (arrays["label"] == 1))
    return images[called], arrays["nodule_mask"][called]


@pytest.mark.parametrize("method", ["saliency", "integrated-gradients", "grad-cam", "grad-cam-signed",
                                    "iterative:saliency", "iterative:grad-cam", "iterative:grad-cam-signed"])
def test_a_trained_users_module_points_at_the_nodule_far_above_chance(trained, method):
    """On every patch of a malignant nodule the model calls malignant (about 90): a one-sided binomial test
    of the hits against the chance of a hit."""
    images, masks = malignant_patches_called_malignant(*trained)
    assert len(images) >= 40
    hits, chance = pointing(trained[0], images, masks, method)
    assert stats.binomtest(hits, len(images), chance, "greater").pvalue < 1e-3, (hits, len(images), chance)
    assert hits / len(images) > 2 * chance


def test_with_the_logit_from_the_features_means_saliency_points_into_the_lung(patches, tmp_path):
    """The same module with a mean over the patch before its logit (a stride-2 stem, then global average
    pooling): Grad-CAM still points at the nodule far above chance, saliency's peaks lie in the lung's texture,
    within twice chance (what the README states of such a network)."""
    bundle = trained_module(patches, tmp_path, "mean")
    images, masks = malignant_patches_called_malignant(bundle, patches)
    assert len(images) >= 40
    hits, chance = pointing(bundle, images, masks, "grad-cam")
    assert stats.binomtest(hits, len(images), chance, "greater").pvalue < 1e-3, (hits, len(images), chance)
    hits, chance = pointing(bundle, images, masks, "saliency")
    assert hits / len(images) < 2 * chance, (hits, len(images), chance)


def test_the_benchmark_measures_the_users_2_5d_module_on_its_neighbouring_slices(trained, tmp_path):
    """Held-out patches with three slices as channels (96 px / 60 mm); localization on the patch's own slice,
    deletion and insertion over every channel; Algorithm 1 on them; what a 2.5D model cannot serve skipped with
    the reason."""
    from xaiexplain.evaluate.benchmark import held_out_patches, run_benchmark

    bundle, _ = trained
    data = held_out_patches(4, size=96, field_of_view_mm=60.0, slices=3)
    assert data["images"].shape == (4, 3, 96, 96) and data["nodule_mask"].shape == (4, 96, 96)
    assert data["lung_images"].shape[1:] == (3, 96, 96)
    summary = run_benchmark(tmp_path / "out", quick=True, model=bundle.path, progress=False, data=data,
                            methods=["saliency", "integrated-gradients", "grad-cam", "iterative:grad-cam", "lrp",
                                     "cycle-am"])
    assert set(summary["methods"]) == {"saliency", "integrated-gradients", "grad-cam", "iterative:grad-cam"}
    assert summary["skipped"]["cycle-am"].endswith("it reads 3 slices as channels")
    assert "GELU" in summary["skipped"]["lrp"]
    iterative = summary["methods"]["iterative:grad-cam"]
    assert iterative["iterations_mean"] >= 1 and 0 <= iterative["ended_below_threshold"] <= summary["decided_malignant"]
    assert summary["reference_check"]["nodule_free_lung_patches"]["median_probability"] < bundle.threshold
    assert summary["decided_malignant"] >= 1
    for method, entry in summary["methods"].items():
        assert entry["randomization_spearman"] is not None and entry["nodule"]["patches"] >= 1, method
    # removing what integrated gradients and Grad-CAM call evidence first lowers the score faster than adding it
    for method in ("integrated-gradients", "grad-cam"):
        entry = summary["methods"][method]
        assert entry["deletion_auc"] < entry["insertion_auc"], (method, entry["deletion_auc"], entry["insertion_auc"])
    assert (tmp_path / "out" / "benchmark.md").is_file()
