"""Counterfactuals of cycle-consistent activation maximization (paper 1): G+(x) and G-(x), the patch made
malignant and made benign by the two generators, with the classifier's probabilities."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from xaiexplain.models.bundles import Bundle, load_bundle

DEFAULT_CYCLE_AM = "demo-cycle-am"


@dataclass
class Counterfactuals:
    """G+(x) and G-(x) of cycle-consistent activation maximization, in HU, with the classifier's
    malignancy probabilities."""

    malignant: np.ndarray  # G+(x), (N, H, W) HU
    benign: np.ndarray  # G-(x)
    malignant_probability: np.ndarray  # p(G+(x)), (N,)
    benign_probability: np.ndarray  # p(G-(x))


def counterfactuals(bundle: Bundle, patches_hu: np.ndarray, generators=None) -> Counterfactuals:
    """G+(x) and G-(x) for HU patches; ``generators`` a cycle-am bundle (default the shipped one)."""
    generators = load_bundle(generators or DEFAULT_CYCLE_AM, role="cycle-am")
    x = bundle.to_tensor(patches_hu)
    with torch.no_grad():
        plus = torch.cat([generators.model.plus(x[n:n + 256]) for n in range(0, len(x), 256)])
        minus = torch.cat([generators.model.minus(x[n:n + 256]) for n in range(0, len(x), 256)])
    return Counterfactuals(malignant=bundle.to_hu(plus), benign=bundle.to_hu(minus),
                           malignant_probability=bundle.probability(plus),
                           benign_probability=bundle.probability(minus))
