"""Counterfactuals of cycle-consistent activation maximization (paper 1): G+(x) and G-(x), the patch made
malignant and made benign by the two generators, with the classifier's probabilities.

A cycle-am bundle belongs to the classifier it was trained against: its generators learned what that
network reads, so with another classifier their images and R = G+(x) - G-(x) mean nothing. The bundle
records the classifier's weight fingerprint, and ``generators_for`` refuses another classifier.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from xaiexplain.errors import XAIExplainError
from xaiexplain.models import cycle_am
from xaiexplain.models.bundles import Bundle, load_bundle, shown_name
from xaiexplain.models.ssim import ssim_per_image

DEFAULT_CYCLE_AM = "demo-cycle-am"
BATCH = 256


@dataclass
class Counterfactuals:
    """G+(x) and G-(x) of cycle-consistent activation maximization, in HU, with the classifier's
    malignancy probabilities."""

    malignant: np.ndarray  # G+(x), (N, H, W) HU; (N, D, H, W) of volumes
    benign: np.ndarray  # G-(x)
    malignant_probability: np.ndarray  # p(G+(x)), (N,)
    benign_probability: np.ndarray  # p(G-(x))


def generators_for(bundle: Bundle, generators=None, allow_other_classifier: bool = False) -> Bundle:
    """The cycle-am bundle ``generators`` (default the shipped one), loaded, if it was trained against the
    classifier ``bundle``; otherwise one sentence (``allow_other_classifier`` overrides the check)."""
    generators = load_bundle(generators or DEFAULT_CYCLE_AM, device=bundle.device, role="cycle-am")
    generators.model.to(bundle.device)  # a Bundle handed in as it is
    recorded = generators.config["classifier"]["weights_sha256"]
    if recorded != bundle.fingerprint and not allow_other_classifier:
        raise XAIExplainError(
            f"the cycle-am bundle {shown_name(generators.path)} was trained against another classifier (weights "
            f"sha256 {recorded[:12]}), not {shown_name(bundle.path)} ({bundle.fingerprint[:12]}): train one for it "
            f"with xaiexplain-train cycle-am --classifier {shown_name(bundle.path)}, and give it as --cycle-am")
    if generators.patch_shape != bundle.patch_shape:  # not even with the override: they cannot read its patches
        unit = "voxels" if len(generators.patch_shape) == 3 else "px"
        raise XAIExplainError(
            f"the cycle-am bundle {shown_name(generators.path)} makes patches of "
            f"{' x '.join(map(str, generators.patch_shape))} {unit}, and {shown_name(bundle.path)} reads "
            f"{' x '.join(map(str, bundle.patch_shape))}: train one for it with xaiexplain-train cycle-am "
            f"--classifier {shown_name(bundle.path)}")
    return generators


def counterfactuals(bundle: Bundle, patches_hu: np.ndarray, generators=None,
                    allow_other_classifier: bool = False) -> Counterfactuals:
    """G+(x) and G-(x) for HU patches; ``generators`` a cycle-am bundle trained against ``bundle``."""
    generators = generators_for(bundle, generators, allow_other_classifier)
    x = generators.to_tensor(patches_hu)
    with torch.no_grad():
        plus = torch.cat([generators.model.plus(x[n:n + BATCH]) for n in range(0, len(x), BATCH)])
        minus = torch.cat([generators.model.minus(x[n:n + BATCH]) for n in range(0, len(x), BATCH)])
    malignant, benign = generators.to_hu(plus), generators.to_hu(minus)
    # the classifier reads them as it reads any HU patch: clipped to its window, by its input spec
    return Counterfactuals(malignant=malignant, benign=benign, malignant_probability=bundle.predict(malignant),
                           benign_probability=bundle.predict(benign))


BLUR_CHECK_SIGMA = 1.0  # px


def probabilities_through_blur(bundle: Bundle, patches_hu: np.ndarray, pair: Counterfactuals,
                               sigma: float = BLUR_CHECK_SIGMA) -> dict[str, np.ndarray]:
    """p(malignant) of x, G-(x) and G+(x) as the classifier reads them through a Gaussian blur of ``sigma``
    px. A counterfactual whose effect (against x read through the same blur) mostly vanishes under a 1 px
    blur changed pixels in a pattern against the classifier, not the nodule."""
    def blurred(images_hu):  # the classifier's to_tensor clips to its window; probability batches
        return bundle.probability(cycle_am.gaussian_blur(bundle.to_tensor(images_hu), sigma))
    return {"x": blurred(patches_hu), "G-(x)": blurred(pair.benign), "G+(x)": blurred(pair.malignant)}


def proximity(bundle: Bundle, patches_hu: np.ndarray, pair: Counterfactuals,
              on_ct_range: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """SSIM(x, G+(x)) and SSIM(x, G-(x)) per patch, on the images as the classifier reads them (its window:
    blind to every change above and below it), or, ``on_ct_range``, on the whole CT range (-1024 to 3071 HU
    mapped to [0, 1]), which sees a generator's changes of calcification above the window."""
    low, high = cycle_am.CT_HU_RANGE if on_ct_range else bundle.input.hu_window

    def scaled(images):  # [0, 1], as SSIM's constants assume
        return torch.from_numpy((np.clip(images, low, high)[:, None] - low) / (high - low)).float()
    x = scaled(patches_hu)
    with torch.no_grad():
        return (ssim_per_image(x, scaled(pair.malignant)).cpu().numpy(),
                ssim_per_image(x, scaled(pair.benign)).cpu().numpy())
