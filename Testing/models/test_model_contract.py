"""Issue 26: the model contract. Models a user brings (a TorchScript file, a class of their own Python file, a
MONAI network) become bundles that the methods explain through one contract; what a model cannot serve is
refused in one sentence naming the reason."""
import json

import numpy as np
import pytest
import torch
from torch import nn

import xaiexplain
from helpers import assert_deep_taylor_conserves_layer_by_layer, assert_one_line_error, xaiexplain as run_cli
from user_models import USER_MODEL, module_bundle, monai_densenet_bundle, nodule_patches
from xaiexplain.errors import XAIExplainError
from xaiexplain.explainers import lrp, registry
from xaiexplain.models.contract import OutputSpec
from xaiexplain.models.layer_chain import layer_chain
from xaiexplain.models.making import make_bundle

HOOK_METHODS = ("guided-backprop", "grad-cam", "grad-cam-signed", "guided-grad-cam", "deep-shap", "lrp", "deep-taylor")


@pytest.fixture(scope="module")
def shipped():
    return xaiexplain.load_bundle("demo-classifier")


@pytest.fixture(scope="module")
def scripted(shipped, tmp_path_factory):
    folder = tmp_path_factory.mktemp("torchscript")
    torch.jit.save(torch.jit.script(shipped.model), str(folder / "classifier.pt"))
    return make_bundle(folder / "bundle", torchscript=folder / "classifier.pt", input_spec=shipped.input.to_config(),
                       threshold=shipped.threshold)


@pytest.mark.parametrize("method", ["saliency", "integrated-gradients", "cycle-am"])
def test_torchscript_gives_the_modules_maps(shipped, scripted, method):
    patches = nodule_patches()
    theirs = xaiexplain.explain(scripted, patches, method)
    ours = xaiexplain.explain(shipped, patches, method)
    np.testing.assert_allclose(theirs, ours, atol=1e-5 * np.abs(ours).max())
    np.testing.assert_allclose(scripted.predict(patches), shipped.predict(patches), atol=1e-6)


@pytest.mark.parametrize("method", HOOK_METHODS)
def test_torchscript_refuses_the_methods_that_need_hooks_in_one_sentence(scripted, method):
    with pytest.raises(XAIExplainError) as refused:
        xaiexplain.explain(scripted, nodule_patches(1), method)
    message = str(refused.value)
    assert "TorchScript" in message and "\n" not in message
    assert message.endswith("methods that work with this model: saliency, integrated-gradients, cycle-am")


@pytest.fixture(scope="module")
def user_bundle(tmp_path_factory):
    return module_bundle(tmp_path_factory.mktemp("user"), USER_MODEL, "UserNet", {"width": 8},
                         input_spec={"patch_size": 96, "field_of_view_mm": 60.0, "slices": 3},
                         output_spec={"form": "logit", "entry": "logit"})


def test_a_users_module_is_explained_at_its_input_spec(user_bundle):
    assert user_bundle.patch_shape == (3, 96, 96) and user_bundle.config["source"]["kind"] == "python"
    assert user_bundle.contract.default_layer == "blocks.2.act"  # the last layer with a map over the patch
    patches = nodule_patches(2, size=96, slices=3)
    for method in ("saliency", "integrated-gradients", "grad-cam"):
        maps = xaiexplain.explain(user_bundle, patches, method)
        assert np.isfinite(maps).all() and np.abs(maps).max() > 0, method
        assert maps.shape[-2:] == (96, 96), method
    with pytest.raises(XAIExplainError, match="reads patches of 3 x 96 x 96"):
        xaiexplain.explain(user_bundle, nodule_patches(1, slices=3), "saliency")


@pytest.mark.parametrize("method", ["lrp", "deep-taylor", "deep-shap"])
def test_the_layer_wise_methods_refuse_the_gelu_by_name(user_bundle, method):
    with pytest.raises(XAIExplainError) as refused:
        xaiexplain.explain(user_bundle, nodule_patches(1, size=96, slices=3), method)
    assert "no rule for GELU at blocks.0.act" in str(refused.value), str(refused.value)
    assert "no rule for add at" in str(refused.value)  # the residual connection, named too


def test_guided_backpropagation_refuses_a_network_that_is_not_relu(user_bundle):
    with pytest.raises(XAIExplainError, match="GELU at blocks.0.act is not a ReLU"):
        xaiexplain.explain(user_bundle, nodule_patches(1, size=96, slices=3), "guided-backprop")


def test_a_bundle_of_a_python_file_refuses_the_file_once_it_changed(user_bundle):
    import shutil

    copy = user_bundle.path.parent / "changed"
    shutil.copytree(user_bundle.path, copy)
    (copy / "model.py").write_text(USER_MODEL + "\nprint('changed')\n")
    with pytest.raises(XAIExplainError, match="not the file the bundle was made from"):
        xaiexplain.load_bundle(copy)


def test_the_bundle_command_says_which_methods_the_model_allows(tmp_path):
    torch.jit.save(torch.jit.script(xaiexplain.load_bundle().model), str(tmp_path / "model.pt"))
    result = run_cli("bundle", "--torchscript", tmp_path / "model.pt", "--threshold", "0.5", "--out",
                     tmp_path / "bundle")
    assert result.returncode == 0, result.stderr
    assert "saliency: yes" in result.stdout and "grad-cam: no, needs hooks" in result.stdout
    config = json.loads((tmp_path / "bundle" / "config.json").read_text())
    assert config["source"] == {"kind": "torchscript", "file": "model.pt"}
    assert config["check"]["methods"]["lrp"] and config["check"]["methods"]["saliency"] is None
    bad = run_cli("bundle", "--torchscript", tmp_path / "model.pt", "--patch-size", "32", "--out", tmp_path / "bad")
    assert_one_line_error(bad, "does not read one-channel patches of its input.patch_size, 32 x 32 px")
    assert not (tmp_path / "bad").exists()


def test_a_monai_network_is_explained_by_every_method_it_allows(tmp_path):
    bundle = monai_densenet_bundle(tmp_path)
    patches = nodule_patches(2)
    allowed = [name for name in registry.base_methods() if name != "cycle-am" and not registry.get(name).refusal(bundle)]
    assert {"saliency", "integrated-gradients", "grad-cam", "guided-backprop"} <= set(allowed)
    for method in allowed:
        maps = xaiexplain.explain(bundle, patches, method)
        assert maps.shape == (2, 64, 64) and np.isfinite(maps).all(), method
    # DenseNet concatenates its features: no chain of layers for the layer-wise rules, and they say so
    assert "no rule for cat" in registry.get("lrp").refusal(bundle)


class PoolingNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.LeakyReLU(0.1), nn.MaxPool2d(2),
            nn.Sequential(nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2)),
            nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Dropout(0.2), nn.Identity())
        self.classifier = nn.Linear(8 * 4 * 4, 2)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def test_deep_taylor_conserves_relevance_layer_by_layer_through_pooling_and_leaky_relu():
    torch.manual_seed(0)
    network = PoolingNet().eval()
    with torch.no_grad():
        network.features[1].running_mean.uniform_(-0.1, 0.1)
        network.features[1].running_var.uniform_(0.5, 2)
    assert_deep_taylor_conserves_layer_by_layer(network, torch.rand(3, 1, 32, 32),
                                                {"MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "Conv2d", "Linear"})


def test_a_layer_without_a_rule_is_refused_by_name_never_passed_through():
    network = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Tanh(), nn.Upsample(scale_factor=2), nn.Flatten(), nn.LazyLinear(2))
    network(torch.zeros(1, 1, 8, 8))
    chain = layer_chain(network, OutputSpec())
    assert chain.problems == ["no rule for Tanh at 1", "no rule for Upsample at 2"]
    with pytest.raises(XAIExplainError, match="no rule for Tanh at 1; no rule for Upsample at 2"):
        lrp.relevance(network, torch.zeros(1, 1, 8, 8))


def test_phantom_patches_at_a_models_spec_and_a_threshold_chosen_on_a_patch_set(tmp_path, tiny_patch_set, shipped):
    from xaiexplain.data.patch_set import load_patch_set

    result = run_cli("phantom", "--patches", "--scans", "LIDC-IDRI-0078", "--lung-patches", "2", "--patch-size", "48",
                     "--field-of-view-mm", "60", "--out", tmp_path / "patches")
    assert result.returncode == 0, result.stderr
    arrays, _, summary = load_patch_set(tmp_path / "patches")
    assert arrays["images"].shape[1:] == (48, 48) and arrays["nodule_mask"].shape[1:] == (48, 48)
    assert (summary["patch_size"], summary["field_of_view_mm"]) == (48, 60.0)

    torch.jit.save(torch.jit.script(shipped.model), str(tmp_path / "model.pt"))
    chosen = make_bundle(tmp_path / "bundle", torchscript=tmp_path / "model.pt", threshold_from=tiny_patch_set)
    assert 0 < chosen.threshold < 1 and "validation ROC point" in chosen.config["threshold_rule"]
    with pytest.raises(XAIExplainError, match="holds patches of 48 x 48 px, but the model reads 64 x 64"):
        make_bundle(tmp_path / "other", torchscript=tmp_path / "model.pt", threshold_from=tmp_path / "patches")
    assert not (tmp_path / "other").exists()


def test_the_slicer_panel_greys_out_what_the_chosen_model_cannot_serve_without_torch(scripted):
    """The panel's method list reads the bundle's recorded check (Slicer's process never imports torch)."""
    import subprocess
    import sys

    code = ("import sys, json; import xaiexplain.slicer as xs; "
            f"refused = xs.refused_methods({str(scripted.path)!r}); "
            "assert 'torch' not in sys.modules; print(json.dumps(refused))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    refused = json.loads(result.stdout)
    assert set(refused) == {*HOOK_METHODS, *(f"iterative:{m}" for m in HOOK_METHODS)}
    assert "TorchScript" in refused["iterative:grad-cam"]
    assert json.loads(subprocess.run([sys.executable, "-c", code.replace(str(scripted.path), "demo-classifier")],
                                     capture_output=True, text=True).stdout) == {}


def test_a_default_layer_that_is_no_map_over_the_patch_is_refused_when_the_bundle_is_made(tmp_path):
    with pytest.raises(XAIExplainError, match="unknown layer 'head' for Grad-CAM"):
        module_bundle(tmp_path, USER_MODEL, "UserNet", {"width": 8}, default_layer="head",
                      input_spec={"patch_size": 96, "field_of_view_mm": 60.0, "slices": 3},
                      output_spec={"form": "logit", "entry": "logit"})
    assert not (tmp_path / "bundle").exists()
