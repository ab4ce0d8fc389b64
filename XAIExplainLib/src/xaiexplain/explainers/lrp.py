"""Layer-wise relevance propagation with the rules of the LRP literature.

captum's ``LRP`` gives every layer the epsilon rule with epsilon = 1e-9 by default, which makes the map
gradient x input, and it has no z^B rule for the input layer; so LRP is done here, with the
"gradient trick" of Montavon et al. (2019), on the classifier with its batch norm folded into the
preceding convolutions (``torch.nn.utils.fusion.fuse_conv_bn_eval``): no rule of LRP holds across a batch
norm layer, and a folded network computes exactly the same function.

The explained output is the positive class's log-odds, as for every method: for two class logits the
malignant minus the benign logit, made one linear layer; a model with one logit explains it as it is. The
network is read through the model contract (``xaiexplain.models.layer_chain``): any chain of
convolutions (batch norm folded), linear layers, ReLU and LeakyReLU (relevance passes through them, as
through flatten, dropout and identity), max and average pooling (adaptive too; LRP-0, which sends a max
pool's relevance to the winning input), in nested ``nn.Sequential`` or written out in ``forward``. A layer
without a rule is refused by name, never passed through.

- ``lrp``: the composite that Montavon et al. (2019, section 10.3) recommend for convolutional networks:
  z^B at the input layer (pixels are bounded by the network's input range [0, 1]), LRP-gamma (gamma 0.25)
  in the lower convolutions (block 2 here), LRP-epsilon (epsilon 0.25 times the standard deviation of the
  layer's pre-activations of that image) in the upper convolutions (blocks 3 and 4), and LRP-0 at the
  dense layer. Lower layers get gamma because their many small contributions make plain gradients noisy,
  upper layers epsilon to keep only the salient paths, the dense layer LRP-0 to stay faithful to the output.
  z^B and z+ leave the biases out, so they conserve relevance exactly; gamma, epsilon and LRP-0 keep
  them, and the relevance biases and epsilon absorb is lost, as the literature has it.
- ``deep-taylor``: deep Taylor decomposition for ReLU networks (Montavon et al. 2017): the z+ rule in every
  hidden layer and, at the pixels, which are bounded (the HU window mapped to [0, 1]), the z^B rule of the
  same paper (section 4.2, "bounded input domain"), biases left out. z+ at the pixels would give a pixel at
  the bottom of the window (-1000 HU: air and the lung beside a nodule) no relevance at all and scale the
  rest with its intensity. Relevance is conserved exactly from layer to layer and, for f(x) > 0, every
  pixel's relevance is non-negative (z^B's contributions x w - l w+ - h w- are >= 0 for l <= x <= h).

References: S. Bach et al., On pixel-wise explanations for non-linear classifier decisions by layer-wise
relevance propagation, PLoS ONE 10(7), 2015; G. Montavon et al., Explaining nonlinear classification
decisions with deep Taylor decomposition, Pattern Recognition 65, 2017; G. Montavon, A. Binder,
S. Lapuschkin, W. Samek, K.-R. Mueller, Layer-wise relevance propagation: an overview, in Explainable AI,
LNCS 11700, 2019.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from xaiexplain.errors import XAIExplainError
from xaiexplain.models.contract import OutputSpec
from xaiexplain.models.layer_chain import BATCH_NORMS, CONVOLUTIONS, POOLING, layer_chain

GAMMA = 0.25
EPSILON_FRACTION_OF_STD = 0.25
STABILIZER = 1e-9
INPUT_RANGE = (0.0, 1.0)  # the network's inputs: the HU window mapped to [0, 1]


def linear_output_reason(output: OutputSpec) -> str | None:
    """Why a layer-wise method cannot explain this output spec's log-odds as one linear layer's output."""
    if output.form == "probabilities":
        return "its output is probabilities, and their log-odds are no layer's output"
    return None


def folded_layers(network: nn.Module, output: OutputSpec = OutputSpec()) -> list[nn.Module]:
    """The network as a list of layers with each batch norm folded into its convolution, ending in a
    one-output linear layer that computes the decision's log-odds (two logits: their difference); one
    sentence naming every layer without a rule where it has some."""
    chain = layer_chain(network, output)
    reason = chain.reason or linear_output_reason(output)
    if reason:
        raise XAIExplainError(f"the layer-wise rules cannot walk this network: {reason}")
    modules = [copy.deepcopy(module).eval().float() for _, module in chain.layers]
    layers = []
    n = 0
    while n < len(modules):
        module = modules[n]
        if isinstance(module, CONVOLUTIONS) and n + 1 < len(modules) and isinstance(modules[n + 1], BATCH_NORMS):
            layers.append(fuse_conv_bn_eval(module, modules[n + 1]))
            n += 2
            continue
        layers.append(module)
        n += 1
    last = layers.pop() if layers and isinstance(layers[-1], nn.Linear) else None
    if last is None:
        raise XAIExplainError("the layer-wise rules cannot walk this network: its last layer is not linear")
    outputs = last.out_features
    index = output.positive_index
    if output.form == "logit" or outputs == 1:
        return layers + [nn.Flatten(), last]
    if outputs != 2:
        raise XAIExplainError(f"the layer-wise rules cannot walk this network: the log-odds of one of its "
                              f"{outputs} classes is no linear layer's output")
    difference = nn.Linear(last.in_features, 1, bias=last.bias is not None)
    with torch.no_grad():
        difference.weight.copy_(last.weight[index:index + 1] - last.weight[1 - index:2 - index])
        if last.bias is not None:
            difference.bias.copy_(last.bias[index:index + 1] - last.bias[1 - index:2 - index])
    return layers + [nn.Flatten(), difference]


def _with_weights(layer: nn.Module, transform, bias: bool = True) -> nn.Module:
    modified = copy.deepcopy(layer)
    with torch.no_grad():
        modified.weight.copy_(transform(layer.weight))
        if modified.bias is not None:
            modified.bias.copy_(transform(layer.bias) if bias else torch.zeros_like(layer.bias))
    return modified


def _stabilized(z: torch.Tensor) -> torch.Tensor:
    return z + STABILIZER * torch.where(z >= 0, 1.0, -1.0)


def propagate(layer, rule: str, activation: torch.Tensor, relevance: torch.Tensor,
              input_range: tuple[float, float] = INPUT_RANGE) -> torch.Tensor:
    """Relevance at the input of one layer (convolution, dense or pooling) by ``rule``; ``input_range``: the
    pixels' bounds for z^B."""
    a = activation.detach().requires_grad_(True)
    if rule == "zB":
        low = torch.full_like(a, input_range[0]).requires_grad_(True)
        high = torch.full_like(a, input_range[1]).requires_grad_(True)
        positive = _with_weights(layer, lambda w: w.clamp(min=0), bias=False)
        negative = _with_weights(layer, lambda w: w.clamp(max=0), bias=False)
        unbiased = _with_weights(layer, lambda w: w, bias=False)
        z = _stabilized(unbiased(a) - positive(low) - negative(high))
        (z * (relevance / z).detach()).sum().backward()
        return (a * a.grad + low * low.grad + high * high.grad).detach()  # the grads carry the minus
    if rule == "z+":
        z = _stabilized(_with_weights(layer, lambda w: w.clamp(min=0), bias=False)(a))
    elif rule == "gamma":
        z = _stabilized(_with_weights(layer, lambda w: w + GAMMA * w.clamp(min=0))(a))
    elif rule == "epsilon":
        z = layer(a)
        # epsilon per image (a batch must not change an image's map)
        spread = z.detach().flatten(1).std(dim=1).reshape(-1, *[1] * (z.dim() - 1))
        z = z + EPSILON_FRACTION_OF_STD * spread * torch.where(z >= 0, 1.0, -1.0)
    else:  # "0": LRP-0
        z = _stabilized(layer(a))
    (z * (relevance / z).detach()).sum().backward()
    return (a * a.grad).detach()


def composite_rules(layers: list[nn.Module]) -> list[str | None]:
    """``lrp``'s rule per layer: z^B at the first linear layer, gamma for the lower half of the convolutions,
    epsilon for the upper half, LRP-0 at the dense layers and pooling; None for layers relevance passes
    through (activations, flatten, dropout, identity)."""
    convolutions = [n for n, layer in enumerate(layers) if isinstance(layer, CONVOLUTIONS)]
    rules: list[str | None] = ["0" if isinstance(layer, (nn.Linear,) + POOLING) else None for layer in layers]
    for position, n in enumerate(convolutions):
        rules[n] = "gamma" if position < (len(convolutions) + 1) // 2 else "epsilon"
    rules[_first_linear(layers)] = "zB"
    return rules


def _first_linear(layers: list[nn.Module]) -> int:
    return next(n for n, layer in enumerate(layers) if isinstance(layer, CONVOLUTIONS + (nn.Linear,)))


def deep_taylor_rules(layers: list[nn.Module]) -> list[str | None]:
    """``deep-taylor``'s rule per layer: z^B at the input layer, z+ in every other linear layer."""
    rules: list[str | None] = ["z+" if isinstance(layer, CONVOLUTIONS + (nn.Linear,)) else "0" if isinstance(layer, POOLING)
                               else None for layer in layers]
    rules[_first_linear(layers)] = "zB"
    return rules


NAMED_RULES = {"composite": composite_rules, "deep-taylor": deep_taylor_rules}


def relevance(network: nn.Module, x: torch.Tensor, rules: str | list = "composite",
              per_layer: list | None = None, output: OutputSpec = OutputSpec(),
              input_range: tuple[float, float] = INPUT_RANGE) -> tuple[torch.Tensor, torch.Tensor]:
    """(input relevance (N, C, H, W), f(x) (N,)) of network inputs ``x`` (N, C, H, W) (or (N, C, D, H, W)
    for a volume: every rule holds in 3D as in 2D); ``rules`` is
    "composite" (``lrp``), "deep-taylor", one rule for every linear layer (e.g. "z+") or a rule per layer
    of ``folded_layers``. ``per_layer``, where given, receives (layer, summed relevance at its input (N,)) for
    every layer a rule was applied to, from the output down: how much of f(x) each layer conserves.
    ``output``: the network's output spec; ``input_range``: the network values of the HU window's ends."""
    layers = [layer.to(x.device) for layer in folded_layers(network, output)]
    if rules in NAMED_RULES:
        rules = NAMED_RULES[rules](layers)
    elif isinstance(rules, str):
        rules = [rules if isinstance(layer, CONVOLUTIONS + (nn.Linear,)) else "0" if isinstance(layer, POOLING) else None
                 for layer in layers]
    activations = [x.detach().float()]
    with torch.no_grad():
        for layer in layers:
            activations.append(layer(activations[-1]))
    output = activations[-1]
    current = output.clone()
    with torch.enable_grad():
        for n in reversed(range(len(layers))):
            if rules[n] is None:
                current = current.reshape(activations[n].shape)  # activations and flatten pass relevance through
                continue
            current = propagate(layers[n], rules[n], activations[n], current, input_range)
            if per_layer is not None:
                per_layer.append((layers[n], current.flatten(1).sum(1)))
    return current, output[:, 0]
