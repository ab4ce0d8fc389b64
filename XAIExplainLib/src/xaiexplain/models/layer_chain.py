"""Which layers a layer-wise method (LRP, deep Taylor, DeepLiftShap) can walk: a network traced with
``torch.fx`` as the chain of layers its forward pass calls one after another, in 2D and 3D, and the reasons
it is not one (``models.contract.requirement_reasons`` reads them)."""
from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
from torch import nn


def is_torchscript(network) -> bool:
    return isinstance(network, (torch.jit.ScriptModule, torch.jit.RecursiveScriptModule))


# The modules the layer-wise rules cover (``xaiexplain.explainers.lrp``), in 2D and 3D; batch norm only right
# after a convolution, into which it is folded.
CONVOLUTIONS = (nn.Conv2d, nn.Conv3d)
BATCH_NORMS = (nn.BatchNorm2d, nn.BatchNorm3d)
LINEAR_LAYERS = CONVOLUTIONS + (nn.Linear,)
ACTIVATIONS = (nn.ReLU, nn.LeakyReLU)
MAX_POOLING = (nn.MaxPool2d, nn.AdaptiveMaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool3d)
POOLING = MAX_POOLING + (nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool3d)
PASS_THROUGH = (nn.Flatten, nn.Dropout, nn.Identity)
_FLATTENING_METHODS = {"reshape", "view", "flatten"}
_SHAPE_ONLY = {"size", "dim"}


@dataclass
class LayerChain:
    """A network as the chain of layers its forward pass calls one after another, each with its module path
    (flattening written in ``forward`` becomes an ``nn.Flatten``), or the reasons it is not one."""

    layers: list[tuple[str, nn.Module]]
    problems: list[str]

    @property
    def reason(self) -> str | None:
        return "; ".join(self.problems) if self.problems else None


def layer_chain(network: nn.Module, output) -> LayerChain:
    """The network traced (``torch.fx``) as a chain of layers; each problem names what has no rule and where.
    ``output``: its ``OutputSpec`` (which entry of a tuple or dict output is the decision)."""
    if is_torchscript(network):
        return LayerChain([], ["a TorchScript model's layers cannot be traced"])
    import torch.fx

    try:
        graph = torch.fx.symbolic_trace(network).graph
    except Exception as error:  # fx raises many kinds on control flow that depends on values
        return LayerChain([], [f"its forward pass cannot be traced as a graph of layers ({type(error).__name__}: "
                                f"{str(error).splitlines()[0][:120]})"])
    modules = dict(network.named_modules())
    chain: list[tuple[str, nn.Module]] = []
    problems: list[str] = []
    current = None  # the node holding the activation the chain has reached
    shape_nodes = set()
    for node in graph.nodes:
        tensors = [a for a in node.all_input_nodes if a not in shape_nodes]
        if node.op == "placeholder":
            current = node
        elif node.op == "call_module":
            module = modules[node.target]
            name = type(module).__name__
            if tensors != [current]:
                problems.append(f"{name} at {node.target} reads more than the previous layer's output")
            elif not isinstance(module, LINEAR_LAYERS + ACTIVATIONS + POOLING + PASS_THROUGH + BATCH_NORMS):
                problems.append(f"no rule for {name} at {node.target}")
            elif isinstance(module, BATCH_NORMS) and not (chain and isinstance(chain[-1][1], CONVOLUTIONS)):
                problems.append(f"batch norm at {node.target} follows no convolution to fold it into")
            chain.append((node.target, module))
            current = node
        elif (node.op == "call_function" and node.target is getattr) or \
                (node.op == "call_method" and node.target in _SHAPE_ONLY) or \
                (node.op == "call_function" and node.target is operator.getitem
                 and all(a in shape_nodes for a in node.all_input_nodes)):
            shape_nodes.add(node)  # x.shape, x.size(0): sizes, not activations
        elif (node.op == "call_method" and node.target in _FLATTENING_METHODS) or \
                (node.op == "call_function" and node.target is torch.flatten):
            if tensors != [current]:
                problems.append(f"{node.target if isinstance(node.target, str) else 'flatten'} at {node.name} reads "
                                f"more than the previous layer's output")
            chain.append((node.name, nn.Flatten()))
            current = node
        elif node.op == "output":
            result = node.args[0]
            if isinstance(result, (tuple, list)) and isinstance(output.entry, int):
                result = result[output.entry]
            elif isinstance(result, dict) and output.entry in result:
                result = result[output.entry]
            if result is not current:
                problems.append("its output is not the last layer's")
        elif node.op == "get_attr":
            problems.append(f"it reads the parameter {node.target} outside a layer")
        else:
            what = getattr(node.target, "__name__", str(node.target))
            problems.append(f"no rule for {what} at {node.name}")
            current = node
    return LayerChain(chain, list(dict.fromkeys(problems)))
