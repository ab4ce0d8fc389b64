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


def test_deep_taylor_conserves_and_is_non_negative_on_patches_called_malignant(bundle, patches):
    images, x = patches
    relevance, f = lrp.relevance(bundle.model, x, "z+")
    called = np.flatnonzero(bundle.predict(images) >= bundle.threshold)
    assert len(called) >= 10
    kept = (relevance.sum(dim=(1, 2, 3)) / f).numpy()[called]
    print(f"deep-taylor: relevance kept sum(R) / f(x), median {np.median(kept):.4f}, "
          f"range {kept.min():.4f}..{kept.max():.4f} over {len(called)} patches called malignant")
    assert np.median(np.abs(kept - 1)) < 0.01  # z+ conserves relevance layer by layer
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
          f"sum(R) / f(x) median {np.median(kept):.3f} (biases and epsilon absorb the rest)")
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
