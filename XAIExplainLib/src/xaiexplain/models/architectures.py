"""The networks (paper 1, 3.2) and the registry that builds them from a bundle's ``config.json``.

The classifier: four convolution blocks (32, 64, 128, 256 kernels; stride 1 in the first, 2 after; batch
norm; ReLU), flatten, a linear layer to two classes (softmax in the loss / at inference). Flattening is
done in ``forward`` rather than by a module so that captum's LRP, which needs a rule for every module,
can run on it.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

CLASS_NAMES = ("benign", "malignant")
MALIGNANT = 1
# The CAM methods' default layer for this classifier: the third block (16 x 16 for 64 x 64 input), not the
# coarsest (8 x 8): paper 2 (IV-B) finds finer layers localise better.
DEFAULT_CAM_LAYER = "block3"


class NoduleClassifier(nn.Module):
    """Paper 1's ConvNet; ``spatial_dims`` 3: the same blocks with 3D convolutions and batch norm, for volumes
    of ``input_size`` (depth, rows, columns; one number: a cube)."""

    def __init__(self, widths=(32, 64, 128, 256), input_size=64, in_channels: int = 1, spatial_dims: int = 2):
        super().__init__()
        convolution, norm = (nn.Conv3d, nn.BatchNorm3d) if spatial_dims == 3 else (nn.Conv2d, nn.BatchNorm2d)
        blocks = []
        channels = in_channels
        for n, width in enumerate(widths):
            blocks += [convolution(channels, width, 3, stride=1 if n == 0 else 2, padding=1, bias=False),
                       norm(width), nn.ReLU()]
            channels = width
        self.features = nn.Sequential(*blocks)
        sizes = list(input_size) if isinstance(input_size, (list, tuple)) else [input_size] * spatial_dims
        # each stride-2 convolution (kernel 3, padding 1) maps a side s to ceil(s / 2)
        for _ in range(len(widths) - 1):
            sizes = [(side + 1) // 2 for side in sizes]
        self.classifier = nn.Linear(channels * int(np.prod(sizes)), len(CLASS_NAMES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, 2) of (benign, malignant)."""
        features = self.features(x)
        return self.classifier(features.reshape(features.shape[0], -1))

    def named_layers(self) -> dict[str, str]:
        """Names for the layers an explanation may look at ("block1" .. "block4": the ReLU closing each
        block), mapped to their module paths as ``named_modules`` gives them ("features.2", ...)."""
        relus = [name for name, module in self.named_modules() if isinstance(module, nn.ReLU)]
        return {f"block{n + 1}": path for n, path in enumerate(relus)}


class CycleAMGenerators(nn.Module):
    """The two generators of cycle-consistent activation maximization: ``plus`` towards malignant,
    ``minus`` towards benign (``xaiexplain.cycle_am``); ``spatial_dims`` 3: 3D U-Nets, for a 3D classifier."""

    def __init__(self, widths=(48, 96, 192, 384), in_channels: int = 1, max_change: float = 1.0,
                 output_range: tuple[float, float] | None = None, spatial_dims: int = 2):
        super().__init__()
        from xaiexplain.models.cycle_am import Generator

        self.plus = Generator(widths, in_channels, max_change, output_range, spatial_dims)
        self.minus = Generator(widths, in_channels, max_change, output_range, spatial_dims)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(G+(x), G-(x))."""
        return self.plus(x), self.minus(x)


ARCHITECTURES = {"NoduleClassifier": NoduleClassifier, "CycleAMGenerators": CycleAMGenerators}
ROLES = {"NoduleClassifier": "classifier", "CycleAMGenerators": "cycle-am"}  # what each architecture is for


def build(architecture: str, arguments: dict) -> nn.Module:
    if architecture not in ARCHITECTURES:
        from xaiexplain.errors import XAIExplainError

        raise XAIExplainError(f"unknown architecture {architecture!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[architecture](**arguments)
