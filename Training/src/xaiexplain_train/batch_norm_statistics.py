"""Batch norm in cycle-am's generators (``cycle_am_training``): running statistics from real images only, recomputed
after training (precise batch norm, Wu & Johnson 2021), and the gap between training and inference mode."""
from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn


def _batch_norms(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@contextlib.contextmanager
def running_statistics_frozen(*modules: nn.Module):
    """Batch norm normalises by the batch as in training but leaves its running statistics as they are
    (momentum 0): for batches of generated images."""
    layers = [layer for module in modules for layer in _batch_norms(module)]
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.momentum = 0.0
    try:
        yield
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum


@torch.no_grad()
def recompute_running_statistics(generator: nn.Module, images: np.ndarray, to_input, batch_size: int,
                                 seed: int = 0) -> None:
    """Precise batch norm: the running statistics as the plain average over random batches of all real
    ``images`` (HU; ``to_input`` maps a batch to the generator's input; training mode, momentum None), drawn
    as training draws them, with the final weights."""
    order = np.random.default_rng(seed).permutation(len(images))
    layers = _batch_norms(generator)
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None
    was_training = generator.training
    generator.train()
    for start in range(0, len(images) - batch_size + 1, batch_size):
        generator(to_input(images[order[start:start + batch_size]]))
    generator.train(was_training)
    for layer, momentum in zip(layers, momenta):
        layer.momentum = momentum


@torch.no_grad()
def train_inference_gap_hu(generator: nn.Module, images: np.ndarray, to_input, batch_size: int,
                           hu_per_unit: float, batches: int = 32, seed: int = 0) -> float:
    """Mean |G(x) in training mode - G(x) in inference mode| in HU over random batches of real ``images`` (HU),
    as training draws them: how far the running statistics are from those of real batches (training mode
    here changes nothing)."""
    chosen = np.random.default_rng(seed).permutation(len(images))[:batches * batch_size]
    with running_statistics_frozen(generator):
        was_training = generator.training
        differences = []
        for start in range(0, len(chosen) - batch_size + 1, batch_size):
            x = to_input(images[chosen[start:start + batch_size]])
            generator.train()
            batch_mode = generator(x)
            generator.eval()
            differences.append((batch_mode - generator(x)).abs().mean().item())
        generator.train(was_training)
    return float(np.mean(differences) * hu_per_unit) if differences else float("nan")
