"""Issue 26: the model contract. Models a user brings (a TorchScript file, a class of their own Python file, a
MONAI network) become bundles that the methods explain through one contract; what a model cannot serve is
refused in one sentence naming the reason."""
import json
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

import xaiexplain
from helpers import assert_one_line_error, xaiexplain as run_cli
from xaiexplain.errors import XAIExplainError
from xaiexplain.explainers import lrp, registry
from xaiexplain.models.contract import OutputSpec, layer_chain
from xaiexplain.models.making import make_bundle

HOOK_METHODS = ("guided-backprop", "grad-cam", "grad-cam-signed", "guided-grad-cam", "deep-shap", "lrp", "deep-taylor")


def nodule_patches(count=4, size=64, slices=None, seed=0):
    """Flat lung with a bright disc of random size and place: enough for the maps to differ."""
    rng = np.random.default_rng(seed)
    rows, columns = np.mgrid[:size, :size]
    patches = rng.normal(-850, 20, (count, size, size)).astype(np.float32)
    for patch in patches:
        centre = rng.uniform(size * 0.3, size * 0.7, 2)
        patch[(rows - centre[0]) ** 2 + (columns - centre[1]) ** 2 < rng.uniform(3, 8) ** 2] = 40
    return patches if slices is None else np.repeat(patches[:, None], slices, axis=1)


def save_weights(module, path):
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous() for k, v in module.state_dict().items()}, str(path))
    return path


def module_bundle(folder, source: str, class_name: str, arguments=None, **contract):
    """A bundle of the class ``class_name`` of the Python ``source`` (written as a file, as a user gives it),
    weights from its own initialization (seed 0)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_source.py").write_text(source)
    namespace = {}
    exec(compile(source, "model_source.py", "exec"), namespace)
    torch.manual_seed(0)
    save_weights(namespace[class_name](**(arguments or {})).eval(), folder / "weights.safetensors")
    return make_bundle(folder / "bundle", python=folder / "model_source.py", class_name=class_name,
                       arguments=arguments, weights=folder / "weights.safetensors", **contract)


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


USER_MODEL = textwrap.dedent('''
    import torch
    from torch import nn

    class Residual(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.conv = nn.Conv2d(width, width, 3, padding=1)
            self.act = nn.GELU()

        def forward(self, x):
            return x + self.act(self.conv(x))

    class UserNet(nn.Module):
        """Three neighbouring slices in, a dict with one logit out."""
        def __init__(self, width=8):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1), nn.ReLU())
            self.blocks = nn.Sequential(Residual(width), nn.MaxPool2d(2), Residual(width))
            self.head = nn.Linear(width, 1)

        def forward(self, x):
            features = self.blocks(self.stem(x))
            return {"logit": self.head(features.mean(dim=(2, 3))), "features": features}
''')


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
    monai = pytest.importorskip("monai.networks.nets")
    arguments = {"spatial_dims": 2, "in_channels": 1, "out_channels": 2, "init_features": 8, "growth_rate": 4,
                 "block_config": [2, 2], "bn_size": 2}
    torch.manual_seed(0)
    save_weights(monai.DenseNet(**arguments), tmp_path / "densenet.safetensors")
    bundle = make_bundle(tmp_path / "bundle", monai="DenseNet", arguments=arguments,
                         weights=tmp_path / "densenet.safetensors")
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
    x = torch.rand(3, 1, 32, 32)
    per_layer = []
    relevance, f = lrp.relevance(network, x, "deep-taylor", per_layer=per_layer)
    logits = network(x)
    np.testing.assert_allclose(f.numpy(), (logits[:, 1] - logits[:, 0]).detach().numpy(), rtol=1e-5, atol=1e-6)
    names = [type(layer).__name__ for layer, _ in per_layer]
    assert {"MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "Conv2d", "Linear"} <= set(names)
    for layer, total in per_layer:
        np.testing.assert_allclose(total.numpy(), f.numpy(), rtol=1e-4, atol=1e-5, err_msg=type(layer).__name__)
    np.testing.assert_allclose(relevance.flatten(1).sum(1).numpy(), f.numpy(), rtol=1e-4, atol=1e-5)


def test_a_layer_without_a_rule_is_refused_by_name_never_passed_through():
    network = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Tanh(), nn.Upsample(scale_factor=2), nn.Flatten(), nn.LazyLinear(2))
    network(torch.zeros(1, 1, 8, 8))
    chain = layer_chain(network, OutputSpec())
    assert chain.problems == ["no rule for Tanh at 1", "no rule for Upsample at 2"]
    with pytest.raises(XAIExplainError, match="no rule for Tanh at 1; no rule for Upsample at 2"):
        lrp.relevance(network, torch.zeros(1, 1, 8, 8))


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


SMALL_MODEL = textwrap.dedent('''
    import torch
    from torch import nn

    class SmallNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                                          nn.Conv2d(8, 8, 3, padding=1), nn.GELU(), nn.AdaptiveAvgPool2d(2))
            self.head = nn.Linear(32, 2)

        def forward(self, x):
            return self.head(self.features(x).flatten(1))
''')


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


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory):
    """A user's 2D module (batch norm, max pooling, GELU, two logits) at 48 px / 60 mm, random weights."""
    return module_bundle(tmp_path_factory.mktemp("small"), SMALL_MODEL, "SmallNet",
                         input_spec={"patch_size": 48, "field_of_view_mm": 60})


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


PROBE_25D_MODEL = PROBE_MODEL.replace("torch.zeros(1, 1, size, size)", "torch.zeros(1, 3, size, size)").replace(
    "def __init__(self, size=48, row=30, column=12):", "def __init__(self, size=48, row=30, column=12, channel=0):").replace(
    "self.weight[0, 0, row, column] = 1.0", "self.weight[0, channel, row, column] = 1.0")


@pytest.mark.parametrize("channel", [0, 1, 2])
def test_a_2_5d_models_channel_maps_go_back_on_the_slices_they_were_read_from(tmp_path, channel):
    """Three neighbouring slices as channels: the probe weighs one pixel of one channel, and the series is flat
    lung but for a bright spot at one world point P. Integrated gradients (from flat lung) is non-zero only where
    the weighed pixel reads P: its peak lands on P, on P's slice, within half a voxel in x and y."""
    import SimpleITK as sitk

    from xaiexplain.data.geometry import ScanGeometry
    from xaiexplain.data.series import read_series
    from xaiexplain.io.dicom import write_dicom_series

    size, field_of_view, row, column = 40, 40.0, 24, 14
    bundle = module_bundle(tmp_path, PROBE_25D_MODEL, "PointProbe",
                           {"size": size, "row": row, "column": column, "channel": channel},
                           input_spec={"patch_size": size, "field_of_view_mm": field_of_view, "slices": 3},
                           output_spec={"form": "logit"})
    assert registry.get("iterative:saliency").refusal(bundle).endswith("it reads 3 slices as channels")
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
    result = xaiexplain.explain_series(ct, [tuple(site)], bundle, ["integrated-gradients"], half_height_mm=6.0)
    stack = result.stacks[0]
    assert stack.channels.shape[1:] == (3, size, size) and stack.patches.shape[1:] == (size, size)
    volume = sitk.GetArrayFromImage(result.relevance["integrated-gradients"])
    peak = np.unravel_index(np.argmax(np.abs(volume)), volume.shape)
    peak_lps = np.asarray(result.relevance["integrated-gradients"].TransformIndexToPhysicalPoint(
        [int(peak[2]), int(peak[1]), int(peak[0])]))
    assert peak[0] == spot[0], (peak, spot)  # P's slice
    assert np.all(np.abs(peak_lps[:2] - p_lps[:2]) <= 0.5 + 1e-6), (peak_lps, p_lps)


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
