"""DeepLiftShap (Lundberg and Lee 2017): DeepLIFT's rescale rule (Shrikumar et al. 2017) averaged over a
set of baselines, for a network that is a chain of layers (``xaiexplain.models.layer_chain``):
convolutions with batch norm folded, linear layers, average pooling, ReLU and LeakyReLU.

captum's ``DeepLiftShap`` gives the same maps (a test compares them to 1e-6) but runs every image against
every baseline with a hook on each layer, at about twice this one's cost. This computes each baseline's
reference activations once (8 images), then one forward and one backward pass of the batch per baseline,
with every ReLU's derivative replaced by the rescale multiplier (relu(z) - relu(z0)) / (z - z0): about 19
input-gradient passes for 8 baselines (``xaiexplain benchmark``), and the memory of one pass.
"""
from __future__ import annotations

import torch
from torch import nn

from xaiexplain.errors import XAIExplainError
from xaiexplain.models.layer_chain import ACTIVATIONS, MAX_POOLING

# DeepLIFT's rescale rule holds for elementwise activations; max pooling needs a rule of its own.
DEEP_LIFT_REFUSED = MAX_POOLING

# |z - z0| below this: the multiplier is the gradient, as DeepLIFT defines it in the limit
SAME_INPUT = 1e-6


class _Rescale(torch.autograd.Function):
    """An elementwise activation whose backward multiplies by the rescale multiplier
    (f(z) - f(z0)) / (z - z0) against the reference input ``z0`` (its gradient where z = z0)."""

    @staticmethod
    def forward(ctx, z, z0, activation):
        ctx.save_for_backward(z, z0)
        ctx.activation = activation
        return activation(z)

    @staticmethod
    def backward(ctx, grad):
        z, z0 = ctx.saved_tensors
        f = ctx.activation
        delta = z - z0
        apart = delta.abs() > SAME_INPUT
        slope = getattr(f, "negative_slope", 0.0)  # ReLU: 0
        multiplier = torch.where(apart, (f(z) - f(z0)) / torch.where(apart, delta, 1.0),
                                 torch.where(z > 0, 1.0, slope).to(z.dtype))
        return grad * multiplier, None, None


def deep_lift_shap(layers: list[nn.Module], x: torch.Tensor, baselines: torch.Tensor) -> torch.Tensor:
    """Attributions (N, C, H, W) of the single output of ``layers`` (``lrp.folded_layers``: a chain of linear
    layers, average pooling, ReLU and LeakyReLU ending in the decision's log-odds) for inputs ``x``
    (N, C, H, W), averaged over ``baselines`` (B, C, H, W). Every elementwise activation gets the rescale
    multiplier; max pooling has no rule here and is refused (``DEEP_LIFT_REFUSED``)."""
    refused = [type(layer).__name__ for layer in layers if isinstance(layer, DEEP_LIFT_REFUSED)]
    if refused:
        raise XAIExplainError(f"deep-shap has no DeepLIFT rule for {refused[0]}")
    with torch.no_grad():
        references, activation = [], baselines
        for layer in layers:
            if isinstance(layer, ACTIVATIONS):
                references.append(activation)
            activation = layer(activation)
    total = torch.zeros_like(x)
    for k in range(len(baselines)):
        inputs = x.detach().requires_grad_(True)
        activation, count = inputs, 0
        for layer in layers:
            if isinstance(layer, ACTIVATIONS):
                activation = _Rescale.apply(activation, references[count][k:k + 1], layer)
                count += 1
            else:
                activation = layer(activation)
        multipliers, = torch.autograd.grad(activation.sum(), inputs)
        total += (x - baselines[k:k + 1]) * multipliers
    return total / len(baselines)
