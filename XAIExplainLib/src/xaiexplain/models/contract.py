"""The model contract: everything XAIExplain knows about a classifier, read from its bundle, in one place.

- **input** (``InputSpec``): how HU voxels become the network's input: the patch (pixels and millimetres per
  axis; ``spatial_dims`` 2 for axial patches, 3 for volumes (depth along z, rows, columns)), how many
  neighbouring axial slices are stacked as channels (1: 2D, 3 or more: 2.5D), the HU window
  and the normalisation (the window mapped to [0, 1], or (HU - mean) / std after clipping to the window);
- **output** (``OutputSpec``): how the network's output becomes the decision's score: which entry of a tuple or
  dict, and whether it is class logits (with the positive class's index), one logit (sigmoid) or
  probabilities. Every method explains the same scalar, the positive class's log-odds
  (``OutputSpec.log_odds``; for two logits the positive minus the other, the shipped classifier's logit
  difference), so every map is signed alike;
- **layers**: names for layers a CAM method may look at (module paths), with a default;
- **capabilities** (``capabilities``): what the network allows, each with the reason where it does not, so that
  a method is refused in one sentence before anything is computed (``xaiexplain.explainers.registry``).

``DecisionScore`` wraps any network (a module of ours, a user's module, a MONAI network or a TorchScript file)
as the one-output model the methods attribute.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from xaiexplain.errors import XAIExplainError
from xaiexplain.models.layer_chain import is_torchscript, layer_chain

OUTPUT_FORMS = {"logits": "class logits (softmax)", "logit": "one logit (sigmoid)",
                "probabilities": "class probabilities"}
NORMALISATIONS = ("window", "standardise")
DEFAULT_PATCH_SIZE = 64
DEFAULT_FIELD_OF_VIEW_MM = 45.0
DEFAULT_HU_WINDOW = (-1000.0, 400.0)
# Probabilities are clamped this far from 0 and 1 before their log-odds are taken (finite gradients).
PROBABILITY_MARGIN = 1e-6


AXES = {2: "(rows, columns)", 3: "(depth, rows, columns)"}


def _per_axis(value, name: str, spatial_dims: int, kind=float) -> tuple:
    """One positive number for every axis, or one per axis (``AXES``)."""
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    values = values * spatial_dims if len(values) == 1 else values
    if len(values) != spatial_dims or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                              and math.isfinite(v) and v > 0 for v in values):
        raise XAIExplainError(f"input.{name} must be a positive number or {spatial_dims} of them "
                              f"{AXES[spatial_dims]}, not {value!r}")
    if kind is int and not all(float(v).is_integer() for v in values):
        raise XAIExplainError(f"input.{name} must be whole numbers of pixels, not {value!r}")
    return tuple(kind(v) for v in values)


@dataclass(frozen=True)
class InputSpec:
    """What the network reads: (slices, rows, columns) values made from HU, or (1, depth, rows, columns) for a
    volume (``spatial_dims`` 3: its axes along world z, y and x, as an axial patch's rows and columns)."""

    patch_size: tuple[int, ...] = (DEFAULT_PATCH_SIZE, DEFAULT_PATCH_SIZE)  # (depth,) rows, columns (px)
    field_of_view_mm: tuple[float, ...] = (DEFAULT_FIELD_OF_VIEW_MM, DEFAULT_FIELD_OF_VIEW_MM)
    slices: int = 1  # neighbouring axial slices as channels, centred on the explained one (odd)
    hu_window: tuple[float, float] = DEFAULT_HU_WINDOW
    normalisation: str = "window"
    mean: float = 0.0  # "standardise": (HU clipped to the window - mean) / std
    std: float = 1.0
    hu_range: tuple[float, float] | None = None  # clipping range when it is wider than the window (generators)

    @classmethod
    def volume_axes(cls, size, field_of_view_mm, slices: int = 1) -> tuple[tuple, tuple]:
        """A volume's (depth, rows, columns) voxels and millimetres along z, y, x, checked as a contract's
        (one number: a cube); one sentence when they are not a volume's."""
        spec = cls.from_config({"spatial_dims": 3, "patch_size": size, "field_of_view_mm": field_of_view_mm,
                                "slices": slices})
        return tuple(spec.patch_size), tuple(spec.field_of_view_mm)

    @classmethod
    def from_config(cls, spec: dict) -> "InputSpec":
        if not isinstance(spec, dict):
            raise XAIExplainError(f"input must be a JSON object, not {spec!r}")
        window = spec.get("hu_window", list(DEFAULT_HU_WINDOW))
        if not (isinstance(window, (list, tuple)) and len(window) == 2 and all(
                isinstance(v, (int, float)) and math.isfinite(v) for v in window) and window[0] < window[1]):
            raise XAIExplainError(f"input.hu_window must be two finite numbers [low, high] with low < high, "
                                  f"not {window!r}")
        slices = spec.get("slices", 1)
        if not (isinstance(slices, int) and not isinstance(slices, bool) and slices >= 1 and slices % 2 == 1):
            raise XAIExplainError(f"input.slices must be an odd whole number (1 for 2D), not {slices!r}")
        spatial_dims = spec.get("spatial_dims", 2)
        if spatial_dims not in (2, 3) or isinstance(spatial_dims, bool):
            raise XAIExplainError(f"input.spatial_dims must be 2 (axial patches) or 3 (volumes), not {spatial_dims!r}")
        if spatial_dims == 3 and slices != 1:
            raise XAIExplainError("input.slices must be 1 for a volume (spatial_dims 3): its depth is patch_size's")
        normalisation = spec.get("normalisation", "window")
        if isinstance(normalisation, str) and normalisation.startswith("HU clipped to"):
            normalisation = "window"  # the description that bundles of XAIExplain 0.x carry
        if normalisation not in NORMALISATIONS:
            raise XAIExplainError(f"input.normalisation must be one of {', '.join(NORMALISATIONS)}, "
                                  f"not {normalisation!r}")
        std = spec.get("std", 1.0)
        if normalisation == "standardise" and not (isinstance(std, (int, float)) and std > 0):
            raise XAIExplainError(f"input.std must be a number above 0, not {std!r}")
        hu_range = spec.get("hu_range")
        return cls(patch_size=_per_axis(spec.get("patch_size", DEFAULT_PATCH_SIZE), "patch_size", spatial_dims, int),
                   field_of_view_mm=_per_axis(spec.get("field_of_view_mm", DEFAULT_FIELD_OF_VIEW_MM),
                                              "field_of_view_mm", spatial_dims),
                   slices=slices, hu_window=(float(window[0]), float(window[1])), normalisation=normalisation,
                   mean=float(spec.get("mean", 0.0)), std=float(std),
                   hu_range=None if hu_range is None else (float(hu_range[0]), float(hu_range[1])))

    def to_config(self) -> dict:
        square = self.spatial_dims == 2 and self.is_square
        config = {"patch_size": self.patch_size[0] if square else list(self.patch_size),
                  "field_of_view_mm": self.field_of_view_mm[0] if square else list(self.field_of_view_mm),
                  "slices": self.slices, "hu_window": list(self.hu_window), "normalisation": self.normalisation}
        if self.spatial_dims == 3:
            config["spatial_dims"] = 3
        if self.normalisation == "standardise":
            config.update(mean=self.mean, std=self.std)
        if self.hu_range is not None:
            config["hu_range"] = list(self.hu_range)
        return config

    @property
    def spatial_dims(self) -> int:
        return len(self.patch_size)

    @property
    def is_square(self) -> bool:
        """Whether the in-plane axes (rows, columns) have one size and one field of view."""
        return self.patch_size[-1] == self.patch_size[-2] and self.field_of_view_mm[-1] == self.field_of_view_mm[-2]

    @property
    def shape(self) -> tuple[int, ...]:
        """(channels, rows, columns) of one network input; (1, depth, rows, columns) for a volume."""
        return (self.slices, *self.patch_size)

    @property
    def pixel_mm(self) -> tuple[float, ...]:
        return tuple(fov / size for fov, size in zip(self.field_of_view_mm, self.patch_size))

    def network_values(self, hu: np.ndarray) -> np.ndarray:
        """HU -> network values (float32, same shape)."""
        low, high = self.hu_window
        clip_low, clip_high = self.hu_range or self.hu_window
        clipped = np.clip(np.asarray(hu, np.float32), clip_low, clip_high)
        if self.normalisation == "standardise":
            return ((clipped - self.mean) / self.std).astype(np.float32)
        return ((clipped - low) / (high - low)).astype(np.float32)

    def hu_values(self, values: np.ndarray) -> np.ndarray:
        """Network values -> HU (the inverse of ``network_values`` within what it clips to)."""
        if self.normalisation == "standardise":
            return np.asarray(values, np.float32) * self.std + self.mean
        low, high = self.hu_window
        return np.asarray(values, np.float32) * (high - low) + low

    def input_value(self, hu: float) -> float:
        """The network value of ``hu``: for flat baselines."""
        return float(self.network_values(np.float32(hu)))

    @property
    def bounds(self) -> tuple[float, float]:
        """The network values of the window's ends: the box the z^B rule bounds the pixels by."""
        return self.input_value(self.hu_window[0]), self.input_value(self.hu_window[1])


@dataclass(frozen=True)
class OutputSpec:
    """How the network's output becomes the positive class's log-odds."""

    form: str = "logits"
    positive_index: int = 1
    entry: int | str | None = None  # which entry of a tuple / list / dict output
    class_names: tuple[str, ...] = ("benign", "malignant")

    @classmethod
    def from_config(cls, spec: dict | None) -> "OutputSpec":
        spec = {} if spec is None else spec
        if not isinstance(spec, dict):
            raise XAIExplainError(f"output must be a JSON object, not {spec!r}")
        form = spec.get("form", "logits")
        if form not in OUTPUT_FORMS:
            raise XAIExplainError(f"output.form must be one of {', '.join(OUTPUT_FORMS)}, not {form!r}")
        names = tuple(spec.get("class_names", ("benign", "malignant") if form != "logit" else ("negative", "positive")))
        index = spec.get("positive_index", 1)
        if not (isinstance(index, int) and not isinstance(index, bool) and index >= 0):
            raise XAIExplainError(f"output.positive_index must be a whole number from 0, not {index!r}")
        if form == "logit" and index != 0 and "positive_index" in spec:
            raise XAIExplainError("output.positive_index is 0 for one logit (its sigmoid is the positive class's)")
        entry = spec.get("entry")
        if entry is not None and not isinstance(entry, (int, str)):
            raise XAIExplainError(f"output.entry must be an index or a key, not {entry!r}")
        return cls(form=form, positive_index=0 if form == "logit" else index, entry=entry, class_names=names)

    def to_config(self) -> dict:
        return {"form": self.form, "positive_index": self.positive_index, "entry": self.entry,
                "class_names": list(self.class_names)}

    @property
    def positive_name(self) -> str:
        return self.class_names[self.positive_index] if self.positive_index < len(self.class_names) else "positive"

    def selected(self, output) -> torch.Tensor:
        """The tensor of the decision in a network's output (a tensor, tuple, list or dict)."""
        if isinstance(output, (tuple, list)):
            if self.entry is None or not isinstance(self.entry, int) or not -len(output) <= self.entry < len(output):
                raise XAIExplainError(f"the model returns a {type(output).__name__} of {len(output)}: give "
                                      f"output.entry, the index of its decision's entry")
            output = output[self.entry]
        elif isinstance(output, dict):
            if self.entry not in output:
                raise XAIExplainError(f"the model returns a dict ({', '.join(map(str, output))}): give output.entry, "
                                      f"the key of its decision's entry")
            output = output[self.entry]
        if not isinstance(output, torch.Tensor):
            raise XAIExplainError(f"the model's output entry is a {type(output).__name__}, not a tensor")
        return output.reshape(output.shape[0], -1).float()

    def log_odds(self, output) -> torch.Tensor:
        """(N,) log-odds of the positive class."""
        values = self.selected(output)
        if self.form == "logit":
            if values.shape[1] != 1:
                raise XAIExplainError(f"output.form is one logit, but the model gives {values.shape[1]} values")
            return values[:, 0]
        if values.shape[1] <= self.positive_index:
            raise XAIExplainError(f"output.positive_index is {self.positive_index}, but the model gives "
                                  f"{values.shape[1]} values")
        others = torch.cat([values[:, :self.positive_index], values[:, self.positive_index + 1:]], dim=1)
        if self.form == "probabilities":
            positive = values[:, self.positive_index].clamp(PROBABILITY_MARGIN, 1 - PROBABILITY_MARGIN)
            return torch.log(positive) - torch.log1p(-positive)
        if others.shape[1] == 1:
            return values[:, self.positive_index] - others[:, 0]
        return values[:, self.positive_index] - torch.logsumexp(others, dim=1)

    def probability(self, output) -> torch.Tensor:
        """(N,) probability of the positive class."""
        return torch.sigmoid(self.log_odds(output))


class DecisionScore(nn.Module):
    """A network followed by its decision's log-odds, (N, 1): the one output every method explains (target 0).
    Layers keep their module paths under ``network.``."""

    def __init__(self, network: nn.Module, output: OutputSpec):
        super().__init__()
        self.network = network
        self.output = output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output.log_odds(self.network(x))[:, None]


def spatial_layers(network: nn.Module, spec: InputSpec, device="cpu") -> list[str]:
    """Module paths of the layers whose output is a map over the patch ((N, C, H, W), H and W > 1; for a volume
    (N, C, D, H, W)), in the order a forward pass calls them: the layers a CAM method can weigh. Empty for
    TorchScript (no hooks)."""
    if is_torchscript(network):
        return []
    order: list[str] = []
    handles = []
    for path, module in network.named_modules():
        if path and not list(module.children()):
            def record(module, inputs, output, path=path):
                if isinstance(output, torch.Tensor) and output.dim() == spec.spatial_dims + 2 \
                        and min(output.shape[-spec.spatial_dims:]) > 1 \
                        and path not in order:
                    order.append(path)
            handles.append(module.register_forward_hook(record))
    try:
        with torch.no_grad():
            network(torch.zeros(1, *spec.shape, device=device))
    finally:
        for handle in handles:
            handle.remove()
    return order


@dataclass
class Contract:
    """A classifier bundle's contract: its input and output specs, its named layers and the default one."""

    input: InputSpec
    output: OutputSpec
    layers: dict[str, str] = field(default_factory=dict)  # name -> module path
    default_layer: str | None = None  # a name of ``layers`` or a module path

    def to_config(self) -> dict:
        return {"input": self.input.to_config(), "output": self.output.to_config(),
                "layers": {"named": dict(self.layers), "default": self.default_layer}}


# ---- what a network allows ---------------------------------------------------------------------------------

# Activation modules that are not ReLU: guided backpropagation is defined for ReLU networks (it changes only
# ReLU's backward pass), so these would silently give it plain gradients.
NOT_RELU = (nn.GELU, nn.SiLU, nn.ELU, nn.SELU, nn.CELU, nn.Tanh, nn.Sigmoid, nn.Mish, nn.Softplus, nn.Hardswish,
            nn.Hardsigmoid, nn.PReLU, nn.LeakyReLU, nn.GLU, nn.Softsign, nn.Tanhshrink)
REQUIREMENTS = {
    "hooks": "hooks on the network's layers",
    "spatial layer": "a layer whose output is a map over the patch",
    "ReLU activations": "ReLU activations only",
    "layer chain": "a chain of layers the LRP rules cover",
    "DeepLIFT chain": "a chain of layers DeepLIFT's rules cover",
    "one image": "one slice or one volume per patch, not neighbouring slices as channels (the generators are 2D "
                 "or 3D)",
}


def requirement_reasons(network: nn.Module, contract: Contract, spatial: list[str]) -> dict[str, str | None]:
    """Each of ``REQUIREMENTS``: None where the network meets it, else the reason it does not, in words
    that follow "because"; ``spatial``: the network's ``spatial_layers``."""
    from xaiexplain.explainers.deep_lift import DEEP_LIFT_REFUSED
    from xaiexplain.explainers.lrp import linear_output_reason

    spec = contract.input
    slices_as_channels = f"it reads {spec.slices} slices as channels" if spec.slices != 1 else None
    if is_torchscript(network):
        reason = "a TorchScript model takes no hooks and its layers cannot be traced"
        return {**{name: reason for name in REQUIREMENTS}, "one image": slices_as_channels}
    chain = layer_chain(network, contract.output)
    chain_reason = chain.reason or linear_output_reason(contract.output)
    max_pools = [path for path, module in chain.layers if isinstance(module, DEEP_LIFT_REFUSED)]
    not_relu = [(path, type(module).__name__) for path, module in network.named_modules() if isinstance(module, NOT_RELU)]
    functional = [problem for problem in chain.problems if problem.startswith(("no rule for relu ", "no rule for gelu",
                                                                                 "no rule for silu"))]
    return {
        "hooks": None,
        "spatial layer": None if spatial else
        "no layer of it gives a map over the patch",
        "ReLU activations": (f"{not_relu[0][1]} at {not_relu[0][0]} is not a ReLU" if not_relu else
                             f"its forward pass calls an activation as a function ({functional[0]})" if functional
                             else None),
        "layer chain": chain_reason,
        "DeepLIFT chain": chain_reason or (f"there is no DeepLIFT rule for max pooling at {max_pools[0]}"
                                           if max_pools else None),
        "one image": slices_as_channels,
    }
