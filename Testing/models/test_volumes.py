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
from user_models import VOLUME_MODEL, VOLUME_SPEC, module_bundle
from xaiexplain.errors import XAIExplainError
from xaiexplain.explainers import lrp, registry
from xaiexplain.models.contract import InputSpec



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
                         {"width": 4, "pool": request.param[:3]}, input_spec=VOLUME_SPEC)


def test_a_volume_input_spec_reads_its_axes_and_refuses_what_does_not_fit():
    spec = InputSpec.from_config(VOLUME_SPEC)
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
        if method == "cycle-am":  # 3D generators exist, but the shipped ones are 2D, for the shipped classifier
            assert registry.get(method).refusal(volume_bundle) is None
            with pytest.raises(XAIExplainError, match="demo-cycle-am was trained against another classifier"):
                xaiexplain.explain(volume_bundle, volumes, method)
            with pytest.raises(XAIExplainError, match="demo-cycle-am makes patches of 64 x 64 px"):
                xaiexplain.explain(volume_bundle, volumes, method, allow_other_classifier=True)
            continue
        if reason := registry.get(method).refusal(volume_bundle):
            refused[method] = reason
            continue
        maps = xaiexplain.explain(volume_bundle, volumes, method)
        assert maps.shape == volumes.shape and np.isfinite(maps).all(), method
        assert np.abs(maps).max() > 0, method
        ran.append(method)
    assert {"saliency", "integrated-gradients", "grad-cam", "grad-cam-signed", "lrp", "deep-taylor"} <= set(ran)
    assert registry.get("iterative:saliency").refusal(volume_bundle) is None  # Algorithm 1 in 3D
    # DeepLiftShap has no rule for max pooling: refused for the max-pooling model, run for the other
    assert ("deep-shap" in refused) == ("MaxPool3d" in repr(volume_bundle.model)), refused.get("deep-shap")
    assert "guided-backprop" in refused  # a LeakyReLU is not a ReLU
    with pytest.raises(XAIExplainError, match=r"patches must be \(N, D, H, W\)"):
        xaiexplain.explain(volume_bundle, volumes[:, 0], "saliency")


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


PROBE_3D_MODEL = textwrap.dedent('''
    import torch
    from torch import nn

    class VoxelProbe(nn.Module):
        """One logit: a fixed linear filter that weighs one voxel (depth, row, column) of the volume."""
        def __init__(self, shape=(16, 24, 24), voxel=(11, 7, 17)):
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(1, 1, *shape))
            with torch.no_grad():
                self.weight[(0, 0, *voxel)] = 1.0

        def forward(self, x):
            return (x * self.weight).sum(dim=(1, 2, 3, 4))[:, None] - 0.5
''')


@pytest.mark.parametrize("pixel_mm, slice_mm", [(0.7, 2.5), (0.9, 1.25)])
def test_the_map_of_an_analytic_3d_model_lands_on_the_world_point_it_weighs(tmp_path, pixel_mm, slice_mm):
    """A volume of 16 x 24 x 24 voxels across 40 x 24 x 24 mm (2.5 x 1 x 1 mm voxels) cut about a point of an
    anisotropic series: the probe weighs voxel (d, r, c), i.e. the world point centre + ((c - 11.5) * 1,
    (r - 11.5) * 1, (d - 7.5) * 2.5) mm in x, y, z. Its saliency map goes back into the series by trilinear
    resampling; the peak lands on that point within half a series voxel on every axis, and the relevance
    volume has the series' geometry."""
    import SimpleITK as sitk

    from xaiexplain.data.geometry import ScanGeometry
    from xaiexplain.data.series import read_series
    from xaiexplain.io.dicom import write_dicom_series

    shape, voxel = (16, 24, 24), (11, 7, 17)
    bundle = module_bundle(tmp_path, PROBE_3D_MODEL, "VoxelProbe", {"shape": list(shape), "voxel": list(voxel)},
                           input_spec={"spatial_dims": 3, "patch_size": list(shape),
                                       "field_of_view_mm": [40.0, 24.0, 24.0]},
                           output_spec={"form": "logit"})
    count = int(np.ceil(60 / slice_mm))
    geometry = ScanGeometry(patient_id="PROBE3D", study_instance_uid="1.2.826.0.1.3680043.8.498.90",
                            series_instance_uid="1.2.826.0.1.3680043.8.498.91", pixel_spacing=pixel_mm,
                            slice_thickness=slice_mm, slice_z=tuple(-100.0 + slice_mm * k for k in range(count)),
                            rows=72, columns=72)
    ct = read_series(write_dicom_series(np.full(geometry.shape, -850, np.int16), geometry, tmp_path / "series"))
    centre = np.asarray(ct.image.TransformContinuousIndexToPhysicalPoint((35.3, 36.6, count / 2 - 0.4)))
    result = xaiexplain.explain_series(ct, [tuple(centre)], bundle, ["saliency"])
    volume = result.relevance["saliency"]
    assert volume.GetSize() == ct.image.GetSize() and volume.GetSpacing() == ct.image.GetSpacing()
    assert volume.GetOrigin() == ct.image.GetOrigin() and volume.GetDirection() == ct.image.GetDirection()
    values = sitk.GetArrayFromImage(volume)
    peak = np.unravel_index(np.argmax(values), values.shape)  # (slice, row, column)
    peak_lps = np.asarray(volume.TransformIndexToPhysicalPoint([int(peak[2]), int(peak[1]), int(peak[0])]))
    expected = centre + (np.asarray(voxel[::-1]) - (np.asarray(shape[::-1]) - 1) / 2) * np.array([1.0, 1.0, 2.5])
    assert np.all(np.abs(peak_lps - expected) <= np.array([pixel_mm, pixel_mm, slice_mm]) / 2 + 1e-6), \
        (peak_lps, expected)
    row = result.nodules[0]
    assert row["volume"]["patch_size"] == list(shape) and "slice_probabilities" not in row
    np.testing.assert_allclose(row["methods"]["saliency"]["peak_lps"], expected, atol=1e-4)


def test_explain_series_runs_a_3d_model_from_the_command_line_with_every_method_it_allows(tmp_path):
    import json

    import SimpleITK as sitk

    from helpers import CENTRE, assert_one_line_error, small_series, xaiexplain as run_cli
    from xaiexplain.data.series import read_series

    bundle = module_bundle(tmp_path / "model", VOLUME_MODEL, "VolumeNet", {"width": 4, "pool": "avg"},
                           input_spec=VOLUME_SPEC)
    # every method but cycle-am, whose generators are trained for one classifier (refused below)
    methods = [m for m in registry.base_methods() if not registry.get(m).refusal(bundle) and m != "cycle-am"]
    assert {"saliency", "integrated-gradients", "grad-cam", "deep-shap", "lrp", "deep-taylor"} <= set(methods)
    series, _ = small_series(tmp_path / "series", slices=8)
    arguments = [a for m in methods for a in ("--method", m)]
    result = run_cli("explain", "--series", series, "--point", CENTRE, "--model", bundle.path, *arguments,
                     "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    written = json.loads((tmp_path / "out" / "nodules.json").read_text())
    [nodule] = written["nodules"]
    assert set(nodule["methods"]) == set(methods) and nodule["volume"]["patch_size"] == VOLUME_SPEC["patch_size"]
    reference = sitk.ReadImage(str(next((tmp_path / "out").glob("relevance_*.nrrd"))))
    ct = read_series(series)
    assert reference.GetSize() == ct.image.GetSize() and reference.GetOrigin() == ct.image.GetOrigin()
    assert any((tmp_path / "out").glob("panel_*.png"))
    refused = run_cli("explain", "--series", series, "--point", CENTRE, "--model", bundle.path, "--method",
                      "cycle-am", "--out", tmp_path / "refused")
    assert_one_line_error(refused, "demo-cycle-am was trained against another classifier")
    assert not (tmp_path / "refused").exists()


def test_the_slicer_batch_script_explains_with_a_3d_model(tmp_path):
    from helpers import assert_batch_script_explains

    bundle = module_bundle(tmp_path / "model", VOLUME_MODEL, "VolumeNet", {"width": 4}, input_spec=VOLUME_SPEC)
    assert_batch_script_explains(bundle.path, "grad-cam", tmp_path)


def test_integrated_gradients_on_volumes_runs_fewer_at_once_and_gives_the_same_map(volume_bundle):
    """64 images x steps of 2D patches at once, but 9 of 48^3 volumes (within about 1 GB for paper 1's 3D
    ConvNet); how many run at once never changes the map."""
    from xaiexplain.explainers.captum_methods import integrated_gradients_batch

    assert integrated_gradients_batch(64, 64 * 64) == 64 and integrated_gradients_batch(64, 48 ** 3) == 9
    assert integrated_gradients_batch(4, 48 ** 3) == 4 and integrated_gradients_batch(64, 200 ** 3) == 1
    volumes = nodule_volumes()
    np.testing.assert_allclose(xaiexplain.explain(volume_bundle, volumes, "integrated-gradients", steps=8),
                               xaiexplain.explain(volume_bundle, volumes, "integrated-gradients", steps=8,
                                                  internal_batch_size=1), rtol=1e-4, atol=1e-6)


def test_a_monai_3d_network_is_explained_by_every_method_it_allows(tmp_path):
    """The issue's obvious test: a MONAI network with spatial_dims=3 through the contract."""
    from user_models import monai_densenet_bundle

    bundle = monai_densenet_bundle(tmp_path, spatial_dims=3, input_spec=VOLUME_SPEC)
    assert bundle.input.spatial_dims == 3
    volumes = nodule_volumes()
    allowed = [m for m in registry.base_methods() if m != "cycle-am" and not registry.get(m).refusal(bundle)]
    assert {"saliency", "integrated-gradients", "grad-cam", "guided-backprop"} <= set(allowed)
    for method in allowed:
        maps = xaiexplain.explain(bundle, volumes, method)
        assert maps.shape == volumes.shape and np.isfinite(maps).all(), method
