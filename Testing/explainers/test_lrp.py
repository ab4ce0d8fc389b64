"""LRP and deep Taylor are what their names say: batch norm folded, the rules of the literature, the
properties that define them (conservation, non-negativity) measured on held-out phantom patches."""
import numpy as np
import pytest
import torch
import xaiexplain
from xaiexplain.data.patch_set import held_out_patients, load_patch_set
from xaiexplain.data.sources.phantom_patches import render_patch_set
from xaiexplain.explainers import lrp


@pytest.fixture(scope="module")
def bundle():
    return xaiexplain.load_bundle()


@pytest.fixture(scope="module")
def patches(tmp_path_factory, bundle):
    folder = tmp_path_factory.mktemp("lrp") / "patches"
    render_patch_set(folder, seed=0, patient_ids=held_out_patients(seed=0)[:8], progress=False)
    arrays, _, _ = load_patch_set(folder)
    images = arrays["images"].astype(np.float32)
    return images, bundle.to_tensor(images)


def logit_difference(bundle, x):
    logits = bundle.model(x)
    return logits[:, 1] - logits[:, 0]


def test_folding_batch_norm_keeps_the_function(bundle, patches):
    _, x = patches
    layers = lrp.folded_layers(bundle.model)
    assert not any(isinstance(layer, torch.nn.BatchNorm2d) for layer in layers)
    output = x
    with torch.no_grad():
        for layer in layers:
            output = layer(output)
        np.testing.assert_allclose(output[:, 0].numpy(), logit_difference(bundle, x).numpy(), atol=1e-3)


def conservation_by_layer(bundle, x, rules):
    """sum of relevance at each ruled layer's input over f(x), from the output down: (layer names, (layers, N))."""
    per_layer = []
    _, f = lrp.relevance(bundle.model, x, rules, per_layer=per_layer)
    names = [type(layer).__name__ for layer, _ in per_layer]
    return names, torch.stack([summed / f for _, summed in per_layer]).numpy()


def test_deep_taylor_conserves_and_is_non_negative_on_patches_called_malignant(bundle, patches):
    images, x = patches
    called = np.flatnonzero(bundle.predict(images) >= bundle.threshold)
    assert len(called) >= 10
    _, kept = conservation_by_layer(bundle, x[called], "deep-taylor")
    print(f"deep-taylor: relevance kept sum(R) / f(x) at each layer's input, from the output down, median "
          f"{np.round(np.median(kept, axis=1), 4).tolist()} over {len(called)} patches called malignant")
    assert np.abs(np.median(kept, axis=1) - 1).max() < 0.01  # z+ and z^B conserve relevance layer by layer
    maps = xaiexplain.explain(bundle, images[called], "deep-taylor")
    negative_share = np.array([-m[m < 0].sum() / np.abs(m).sum() for m in maps])
    assert np.median(negative_share) < 0.01 and negative_share.max() < 0.01


def test_lrp_is_not_gradient_times_input(bundle, patches):
    images, x = patches
    maps = xaiexplain.explain(bundle, images, "lrp")
    inputs = x.clone().requires_grad_(True)
    logit_difference(bundle, inputs).sum().backward()
    gradient_x_input = (inputs.grad * x)[:, 0].numpy()
    correlation = [np.corrcoef(m.ravel(), g.ravel())[0, 1] for m, g in zip(maps, gradient_x_input)]
    relevance, f = lrp.relevance(bundle.model, x, "composite")
    kept = (relevance.sum(dim=(1, 2, 3)) / f).numpy()
    print(f"lrp: median correlation with gradient x input {np.median(correlation):.3f}; relevance kept "
          f"sum(R) / f(x) median {np.median(kept):.3f} (negative: see the layer-by-layer test below)")
    assert np.median(correlation) < 0.95
    assert np.isfinite(maps).all() and np.abs(maps).max() > 0


def test_each_rule_conserves_where_theory_says_it_does(bundle, patches):
    """LRP-0, epsilon and gamma conserve relevance up to what biases and epsilon absorb; z+ without biases
    and z^B at the input conserve it exactly (Montavon et al. 2019)."""
    _, x = patches
    layers = lrp.folded_layers(bundle.model)
    activation = x
    with torch.no_grad():
        for layer in layers[:-2]:
            activation = layer(activation)
    upper = torch.nn.Sequential(*layers[-2:])
    relevance_out = upper(activation).detach()
    dense = layers[-1]
    flat = activation.flatten(1)
    for rule in ("z+",):
        relevance_in = lrp.propagate(dense, rule, flat, relevance_out)
        np.testing.assert_allclose(relevance_in.sum(1).numpy(), relevance_out[:, 0].numpy(), rtol=1e-4)
    first = layers[0]
    with torch.no_grad():
        first_out = first(x)
    relevance_in = lrp.propagate(first, "zB", x, first_out.clamp(min=0))
    np.testing.assert_allclose(relevance_in.sum(dim=(1, 2, 3)).numpy(),
                               first_out.clamp(min=0).sum(dim=(1, 2, 3)).numpy(), rtol=1e-3)


def test_deep_taylor_gives_the_darkest_pixels_relevance(bundle, patches):
    """Deep Taylor's pixel rule is z^B (Montavon et al. 2017, 4.2): with z+ at the pixels (before), a pixel at
    the bottom of the window (-1000 HU, air and the lung beside a nodule) got no relevance at all."""
    images, _ = patches
    airy = np.where(images < -800, -1000.0, images).astype(np.float32)  # the phantom's lung as dark as air
    called = np.flatnonzero(bundle.predict(airy) >= bundle.threshold)
    assert len(called) >= 10
    maps = xaiexplain.explain(bundle, airy[called], "deep-taylor")
    darkest = airy[called] <= -1000
    share = np.array([np.abs(m[d]).sum() / np.abs(m).sum() for m, d in zip(maps, darkest)])
    print(f"deep-taylor: share of relevance on pixels at the window's floor (-1000 HU, median "
          f"{np.median(darkest.mean(axis=(1, 2))):.2f} of the patch), median {np.median(share):.3f}")
    assert (share > 0.01).all()


def test_lrp_composite_conservation_layer_by_layer_is_as_the_method_table_says(bundle, patches):
    """The README's method table says that on this network (batch norm folded into biases) the published
    composite's net relevance is negative on most patches called malignant, and that the gamma layers' biases
    turn its sign: measured here layer by layer (issue 25, item 2)."""
    images, x = patches
    called = np.flatnonzero(bundle.predict(images) >= bundle.threshold)
    names, kept = conservation_by_layer(bundle, x[called], "composite")
    rules = [rule for rule in lrp.composite_rules(lrp.folded_layers(bundle.model)) if rule][::-1]
    median = np.median(kept, axis=1)
    print("lrp: sum(R) / f(x) at each ruled layer's input, from the output down, median: "
          + ", ".join(f"{rule} {value:.3f}" for rule, value in zip(rules, median)))
    assert rules[0] == "0" and abs(median[0] - 1) < 0.05  # LRP-0 at the dense layer loses little to its bias
    gamma_layers = [n for n, rule in enumerate(rules) if rule == "gamma"]
    assert median[gamma_layers[0] - 1] > 0 and median[gamma_layers[-1]] < 0  # the sign turns in the gamma block
    assert (kept[-1] < 0).mean() > 0.5 and np.median(kept[-1]) < 0
