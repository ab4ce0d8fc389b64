"""The attribution methods computed through captum (the registry, ``xaiexplain.explainers.registry``, names
them and says what each map means). LRP and deep Taylor are in ``lrp.py`` (captum's rules do not fit
them), DeepLiftShap in ``deep_lift.py`` (the same maps as captum's at half its cost).

Every method explains the same scalar: the log-odds of the positive (malignant) class, by the model
contract's output spec (``xaiexplain.models.contract.DecisionScore``; for two logits the malignant minus the
benign logit). So every map is signed alike: > 0 speaks for malignant, < 0 for benign.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from xaiexplain.errors import XAIExplainError

# Integrated gradients and DeepSHAP start from "no nodule": lung parenchyma (HU), DeepSHAP from a spread of it.
LUNG_BASELINE_HU = -850.0
SHAP_BASELINES_HU = np.linspace(-950.0, -700.0, 8)
INTEGRATED_GRADIENTS_STEPS = 50
# Images x steps that integrated gradients pushes through the network at once. Measured on a 2-core CPU
# (xaiexplain benchmark): 64 runs 50 steps in about the time of 50 forward+backward passes of the batch,
# 512 took 1.5 to 2 times as long (large activations fall out of the caches).
INTEGRATED_GRADIENTS_BATCH = 64
# ... and at most this many input values at once: a volume's activations are large (a 48^3 volume through the
# 3D ConvNet: 64 at once took 3.7 GB, 8 at once 0.7 GB and less time), so volumes go 9 of 48^3 at a time and a
# nodule's integrated gradients stays within about 1 GB; 2D patches (4096 pixels) stay at 64.
INTEGRATED_GRADIENTS_VALUES = 2 ** 20
# The layer option's default: the model contract's default layer (for the shipped classifier block 3, 16 x 16
# for 64 x 64 input, not the coarsest: paper 2 (IV-B) finds finer layers localise better).
DEFAULT_LAYER = "default"


def cam_layer_path(contract, spatial: list[str], name: str) -> str:
    """The module path of a CAM layer given by one of the contract's layer names (``block1`` .. ``block4``
    for the shipped classifier), by module path (as ``named_modules`` gives it, e.g. ``features.8``) or as
    ``default`` (the contract's default); one sentence unless it is a layer whose output is a map over the
    patch (``spatial``: ``Bundle.spatial_layers``), which Grad-CAM can weigh (a linear layer's is not)."""
    if name == DEFAULT_LAYER:
        name = contract.default_layer
    path = contract.layers.get(name, name) if isinstance(name, str) else None
    if path not in spatial:
        named = ", ".join(contract.layers) or "(none named)"
        raise XAIExplainError(f"unknown layer {name!r} for Grad-CAM; give one of {named} or a module path of a "
                              f"layer with a spatial output such as {spatial[-1] if spatial else 'features.2'}")
    return path


@dataclass
class AttributionContext:
    """What a method needs besides the input: the model's decision score, how to make baselines, its options."""

    score: nn.Module  # a DecisionScore: the network followed by its decision's log-odds
    baseline_value: Callable[[float], float]  # HU -> network input value
    options: dict = field(default_factory=dict)
    reference_hu: tuple[float, ...] = (LUNG_BASELINE_HU,)  # flat reference images, chosen per model (references)

    def model(self) -> nn.Module:
        return self.score

    def layer(self, path: str) -> nn.Module:
        """A layer of the network by its module path (resolved by ``cam_layer_path`` when options are prepared)."""
        return dict(self.score.network.named_modules())[path]


def saliency(x, context):
    from captum.attr import Saliency

    return Saliency(context.model()).attribute(x, target=0, abs=False)


def guided_backprop(x, context):
    from captum.attr import GuidedBackprop

    return GuidedBackprop(context.model()).attribute(x, target=0)


def integrated_gradients(x, context):
    from captum.attr import IntegratedGradients

    baseline = torch.full_like(x, context.baseline_value(context.reference_hu[0]))
    return IntegratedGradients(context.model()).attribute(
        x, baselines=baseline, target=0, n_steps=context.options["steps"],
        internal_batch_size=integrated_gradients_batch(context.options["internal_batch_size"], x[0].numel()))


def integrated_gradients_batch(images_at_most: int, values_per_image: int) -> int:
    """Images x steps integrated gradients runs at once: the option, and no more than
    INTEGRATED_GRADIENTS_VALUES input values."""
    return min(images_at_most, max(1, INTEGRATED_GRADIENTS_VALUES // values_per_image))


def _grad_cam_layer(model, context):
    return context.layer(context.options["layer"])


def _upsampling(x) -> str:
    """How a layer's map is brought to the input's grid: bilinear for patches, trilinear for volumes."""
    return "trilinear" if x.dim() == 5 else "bilinear"


def _layer_grad_cam(x, context, relu: bool):
    from captum.attr import LayerAttribution, LayerGradCam

    model = context.model()
    cam = LayerGradCam(model, _grad_cam_layer(model, context)).attribute(x, target=0, relu_attributions=relu)
    return LayerAttribution.interpolate(cam, tuple(x.shape[2:]), interpolate_mode=_upsampling(x))


def grad_cam(x, context):
    """Grad-CAM as Selvaraju et al. define it (eq. 2): ReLU of the gradient-weighted sum of the layer's
    feature maps, the evidence for the explained output (malignant over benign). captum's ``LayerGradCam``
    leaves the ReLU out by default (``relu_attributions=False``); it is set here."""
    return _layer_grad_cam(x, context, relu=True)


def grad_cam_signed(x, context):
    """The same weighted sum without Grad-CAM's ReLU: < 0 where the layer's features speak for benign."""
    return _layer_grad_cam(x, context, relu=False)


def guided_grad_cam(x, context):
    """Guided backpropagation times the upsampled Grad-CAM with its ReLU (Selvaraju et al., section 3.1);
    captum's ``GuidedGradCam`` applies that ReLU itself."""
    from captum.attr import GuidedGradCam

    model = context.model()
    return GuidedGradCam(model, _grad_cam_layer(model, context)).attribute(x, target=0,
                                                                           interpolate_mode=_upsampling(x))


def attribute(method: Callable, x: torch.Tensor, context: AttributionContext, batch_size: int = 256) -> np.ndarray:
    """Maps (N, H, W) float32 of ``method`` (one of this module's functions) for network inputs ``x``
    (N, C, H, W), in batches; (N, C, H, W) where the method gives each of C > 1 input channels its own map;
    (N, D, H, W) for volumes (N, 1, D, H, W)."""
    parts = []
    with warnings.catch_warnings():
        # captum announces, every call, that it sets and removes hooks; nothing for a user to act on
        warnings.filterwarnings("ignore", category=UserWarning, module=r"captum\.")
        for n in range(0, len(x), batch_size):
            batch = x[n:n + batch_size].detach().clone().requires_grad_(True)
            result = method(batch, context).detach().float().cpu().numpy()
            parts.append(result[:, 0] if result.shape[1] == 1 else result)
    maps = np.concatenate(parts) if parts else np.zeros((0,) + tuple(x.shape[2:]), np.float32)
    return np.nan_to_num(maps.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
