"""Models a user brings, as the model-contract tests make them: Python sources written as files, their own
initialization as weights (safetensors), made bundles by ``xaiexplain.models.making.make_bundle``."""
import textwrap

import numpy as np
import torch

from xaiexplain.models.making import make_bundle


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


def monai_densenet_bundle(folder, spatial_dims: int = 2, input_spec: dict | None = None):
    """A small MONAI DenseNet (seeded weights) as a bundle in ``folder``, through ``make_bundle``; skipped
    where MONAI is absent."""
    import pytest
    import torch
    from xaiexplain.models.making import make_bundle

    monai = pytest.importorskip("monai.networks.nets")
    arguments = {"spatial_dims": spatial_dims, "in_channels": 1, "out_channels": 2, "init_features": 8,
                 "growth_rate": 4, "block_config": [2, 2], "bn_size": 2}
    torch.manual_seed(0)
    save_weights(monai.DenseNet(**arguments), folder / "densenet.safetensors")
    return make_bundle(folder / "bundle", monai="DenseNet", arguments=arguments,
                       weights=folder / "densenet.safetensors", input_spec=input_spec)


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
        """Three neighbouring slices in, a dict with one logit out: from every feature of the last block
        (head "dense", for patches of input_size) or from their means over the patch (head "mean")."""
        def __init__(self, width=8, head="dense", input_size=96):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1), nn.ReLU())
            self.blocks = nn.Sequential(Residual(width), nn.MaxPool2d(2), Residual(width))
            self.pooled = head == "mean"
            self.head = nn.Linear(width if self.pooled else width * (input_size // 4) ** 2, 1)

        def forward(self, x):
            features = self.blocks(self.stem(x))
            summary = features.mean(dim=(2, 3)) if self.pooled else features.flatten(1)
            return {"logit": self.head(summary), "features": features}
''')


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


def train_user_module(bundle, patch_set, weights_path, steps=1200, seed=0, batch_size=32):
    """Train a module bundle's network on a patch set (nodule patches and nodule-free lung patches, malignant
    against the rest, each side half of the loss), as a user trains their own model; its weights are written to
    ``weights_path``. A fixed number of seeded steps, so a run is the same on every machine with one thread."""
    from xaiexplain.data.patch_set import load_lung_patches, load_patch_set

    arrays, _, _ = load_patch_set(patch_set)
    lung = load_lung_patches(patch_set)
    images = np.concatenate([arrays["images"], lung["images"]]).astype(np.float32)
    labels = torch.from_numpy(np.concatenate([arrays["label"], np.zeros(len(lung["images"]))]).astype(np.float32))
    weights = torch.where(labels == 1, 0.5 / labels.sum(), 0.5 / (1 - labels).sum()) * len(labels)
    inputs, model, output = bundle.to_tensor(images), bundle.model.train(), bundle.contract.output
    optimizer = torch.optim.Adam(model.parameters(), 3e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 3e-3, total_steps=steps)
    draws = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        rows = torch.randint(len(inputs), (batch_size,), generator=draws)
        x = inputs[rows]
        flips = torch.rand(2, generator=draws) < 0.5
        x = x.flip(-1) if flips[0] else x
        x = x.flip(-2) if flips[1] else x
        log_odds = output.log_odds(model(x))
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(log_odds, labels[rows], reduction="none")
                * weights[rows]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()
    return save_weights(model, weights_path)


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
VOLUME_SPEC = {"spatial_dims": 3, "patch_size": [12, 16, 16], "field_of_view_mm": [24.0, 20.0, 20.0]}
