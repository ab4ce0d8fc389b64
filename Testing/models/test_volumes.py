"""Issue 27: volumes. A 3D model through the model contract: its input spec (depth, rows, columns along world
z, y, x), every method on 3D patches with maps of the patch's shape (Grad-CAM upsampled trilinearly), the
layer-wise rules on 3D convolution, batch norm and pooling, and what 3D cannot do yet refused by name."""
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

import xaiexplain
from helpers import assert_deep_taylor_conserves_layer_by_layer
from user_models import module_bundle
from xaiexplain.errors import XAIExplainError
from xaiexplain.explainers import lrp, registry
from xaiexplain.models.contract import InputSpec

VOLUME_MODEL = textwrap.dedent('''
    import torch
    from torch import nn

    class VolumeNet(nn.Module):
        """A small 3D ConvNet: convolution + batch norm + ReLU blocks, max and average pooling, two logits."""
        def __init__(self, width=4, pool="max"):
            super().__init__()
            pooling = nn.MaxPool3d if pool == "max" else nn.AvgPool3d
            self.features = nn.Sequential(
                nn.Conv3d(1, width, 3, padding=1), nn.BatchNorm3d(width), nn.ReLU(), pooling(2),
                nn.Conv3d(width, 2 * width, 3, padding=1), nn.BatchNorm3d(2 * width), nn.LeakyReLU(0.1),
                nn.AvgPool3d(2), nn.Conv3d(2 * width, 2 * width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool3d(2))
            self.head = nn.Linear(2 * width * 8, 2)

        def forward(self, x):
            return self.head(torch.flatten(self.features(x), 1))
''')
SPEC = {"spatial_dims": 3, "patch_size": [12, 16, 16], "field_of_view_mm": [24.0, 20.0, 20.0]}


def nodule_volumes(count=2, shape=(12, 16, 16), seed=0):
    """Flat lung with a bright ball of random size and place."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.mgrid[tuple(slice(0, s) for s in shape)], -1)
    volumes = rng.normal(-850, 20, (count, *shape)).astype(np.float32)
    for volume in volumes:
        centre = rng.uniform(0.35, 0.65, 3) * np.asarray(shape)
        volume[((grid - centre) ** 2).sum(-1) < rng.uniform(2, 4) ** 2] = 40
    return volumes


@pytest.fixture(scope="module", params=["max", "average"])
def volume_bundle(request, tmp_path_factory):
    return module_bundle(tmp_path_factory.mktemp(f"volume-{request.param}"), VOLUME_MODEL, "VolumeNet",
                         {"width": 4, "pool": request.param[:3]}, input_spec=SPEC)


def test_a_volume_input_spec_reads_its_axes_and_refuses_what_does_not_fit():
    spec = InputSpec.from_config(SPEC)
    assert spec.spatial_dims == 3 and spec.shape == (1, 12, 16, 16)
    assert spec.pixel_mm == (2.0, 1.25, 1.25)
    assert InputSpec.from_config(spec.to_config()) == spec
    assert InputSpec.from_config({"spatial_dims": 3, "patch_size": 32}).patch_size == (32, 32, 32)
    with pytest.raises(XAIExplainError, match=r"3 of them \(depth, rows, columns\)"):
        InputSpec.from_config({"spatial_dims": 3, "patch_size": [32, 32]})
    with pytest.raises(XAIExplainError, match="slices must be 1 for a volume"):
        InputSpec.from_config({"spatial_dims": 3, "slices": 3})
    with pytest.raises(XAIExplainError, match="spatial_dims must be 2"):
        InputSpec.from_config({"spatial_dims": 4})


def test_every_method_a_3d_model_allows_gives_maps_of_the_volumes_shape(volume_bundle):
    volumes = nodule_volumes()
    ran, refused = [], {}
    for method in registry.base_methods():
        if reason := registry.get(method).refusal(volume_bundle):
            refused[method] = reason
            continue
        maps = xaiexplain.explain(volume_bundle, volumes, method)
        assert maps.shape == volumes.shape and np.isfinite(maps).all(), method
        assert np.abs(maps).max() > 0, method
        ran.append(method)
    assert {"saliency", "integrated-gradients", "grad-cam", "grad-cam-signed", "lrp", "deep-taylor"} <= set(ran)
    assert refused["cycle-am"].endswith("it reads volumes of 12 x 16 x 16 voxels")
    assert registry.get("iterative:saliency").refusal(volume_bundle).endswith("12 x 16 x 16 voxels")
    # DeepLiftShap has no rule for max pooling: refused for the max-pooling model, run for the other
    assert ("deep-shap" in refused) == ("MaxPool3d" in repr(volume_bundle.model)), refused.get("deep-shap")
    assert "guided-backprop" in refused  # a LeakyReLU is not a ReLU


def test_grad_cam_on_a_volume_is_its_layers_map_upsampled_trilinearly(volume_bundle):
    from captum.attr import LayerGradCam

    volumes = nodule_volumes()
    maps = xaiexplain.explain(volume_bundle, volumes, "grad-cam-signed", layer="features.8")
    score = volume_bundle.score_model()
    layer = dict(score.named_modules())["network.features.8"]
    cam = LayerGradCam(score, layer).attribute(volume_bundle.to_tensor(volumes), target=0)
    assert cam.shape[2:] == (3, 4, 4)  # the layer's own grid, coarser than the volume in every axis
    expected = torch.nn.functional.interpolate(cam, size=(12, 16, 16), mode="trilinear")[:, 0]
    np.testing.assert_allclose(maps, expected.detach().numpy(), rtol=1e-4, atol=1e-6)


def test_layer_wise_rules_conserve_relevance_layer_by_layer_on_a_3d_network_with_pooling():
    namespace = {}
    exec(VOLUME_MODEL, namespace)
    torch.manual_seed(0)
    network = namespace["VolumeNet"](width=4).eval()
    with torch.no_grad():
        for norm in (network.features[1], network.features[5]):
            norm.running_mean.uniform_(-0.1, 0.1)
            norm.running_var.uniform_(0.5, 2)
    x = torch.rand(3, 1, 12, 16, 16)
    relevance, f = assert_deep_taylor_conserves_layer_by_layer(
        network, x, {"MaxPool3d", "AvgPool3d", "AdaptiveAvgPool3d", "Conv3d", "Linear"})
    assert relevance.shape == x.shape
    positive = f > 0
    assert (relevance[positive] >= -1e-6).all()  # deep Taylor: z+ and z^B give no negative relevance


def test_a_3d_layer_without_a_rule_is_refused_by_name():
    network = nn.Sequential(nn.Conv3d(1, 2, 3), nn.InstanceNorm3d(2), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    network(torch.zeros(1, 1, 6, 6, 6))
    with pytest.raises(XAIExplainError, match="no rule for InstanceNorm3d at 1"):
        lrp.relevance(network, torch.zeros(1, 1, 6, 6, 6))
