"""Whether a method's reference is neutral for the model it explains, and the reference chosen per model.

Integrated gradients explains f(x) - f(x') against a reference image x', DeepLiftShap f(x) - E f(x') over a
set of them. Sundararajan et al. (ICML 2017, section 3) ask for a reference whose score is near zero: when
the model calls the reference itself malignant, the map explains the difference between two "malignant"
inputs, and its signs can call a nodule the model calls malignant benign evidence. Our references are flat
images: lung parenchyma at -850 HU, or a range of lung to air values. So, for each model:
- integrated gradients takes the first of ``INTEGRATED_GRADIENTS_CANDIDATES_HU`` (lung, then towards air) that
  the model calls benign; DeepLiftShap the baselines of ``captum_methods.SHAP_BASELINES_HU`` it calls benign;
- where none is, the method keeps its published default and ``explain`` prints a one-line warning;
- ``nodules.json`` records, per method, the reference used and the model's scores on it.
``reference_check`` is the same check for a bundle as a whole (recorded in a trained bundle, printed by the
benchmark): the scores of flat lung, air and nodule-free lung patches.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xaiexplain.explainers import captum_methods

INTEGRATED_GRADIENTS_CANDIDATES_HU = (captum_methods.LUNG_BASELINE_HU, -900.0, -950.0, -1000.0)
FLAT_CHECKS_HU = {"flat lung": captum_methods.LUNG_BASELINE_HU, "air": -1000.0}
CANDIDATES = {"integrated-gradients": ("flat image", INTEGRATED_GRADIENTS_CANDIDATES_HU, "first"),
              "deep-shap": ("flat baselines", tuple(float(v) for v in captum_methods.SHAP_BASELINES_HU), "all")}


@dataclass(frozen=True)
class ReferenceChoice:
    """The reference a method uses with a model, and the model's malignancy probability on each of its images."""

    method: str
    description: str
    hu: tuple[float, ...]
    probabilities: tuple[float, ...]
    threshold: float

    @property
    def neutral(self) -> bool:
        return all(p < self.threshold for p in self.probabilities)

    def warning(self) -> str | None:
        if self.neutral:
            return None
        worst = int(np.argmax(self.probabilities))
        return (f"{self.method}: its reference ({self.description} at {self.hu[worst]:g} HU) scores p(malignant) "
                f"{self.probabilities[worst]:.2f}, not below the decision threshold {self.threshold:.2f}, so its map "
                f"explains the difference between two inputs the model calls malignant")

    def to_json(self) -> dict:
        return {"description": self.description, "hu": list(self.hu), "probabilities": list(self.probabilities),
                "threshold": self.threshold, "below_threshold": self.neutral}


def base_method(name: str) -> str:
    return name.split(":", 1)[1] if name.startswith("iterative:") else name


def reference_choice(bundle, method: str) -> ReferenceChoice | None:
    """The reference ``method`` (or ``iterative:method``) uses with ``bundle``'s classifier; None for a method
    that has no reference image."""
    name = base_method(method)
    if name not in CANDIDATES:
        return None
    description, candidates, rule = CANDIDATES[name]
    scores = [bundle.flat_probability(hu) for hu in candidates]
    benign = [n for n, p in enumerate(scores) if p < bundle.threshold]
    if rule == "first":
        chosen = benign[:1] or [0]  # none benign: the published default, with the warning
    else:
        chosen = benign or list(range(len(candidates)))
    return ReferenceChoice(name, description, tuple(candidates[n] for n in chosen),
                           tuple(float(scores[n]) for n in chosen), bundle.threshold)


def reference_hu(bundle, method: str) -> tuple[float, ...]:
    choice = reference_choice(bundle, method)
    return choice.hu if choice is not None else ()


def reference_check(predict, threshold: float, lung_patches_hu: np.ndarray | None = None,
                    patch_shape: int | tuple[int, ...] = 64) -> dict:
    """A model's scores on the references: flat lung, air, and (when given) nodule-free lung patches.
    ``predict``: HU patches (N, *patch_shape) -> malignancy probabilities (a square size: (size, size))."""
    shape = (patch_shape, patch_shape) if isinstance(patch_shape, int) else tuple(patch_shape)
    flat = {name: float(predict(np.full((1, *shape), hu, np.float32))[0])
            for name, hu in FLAT_CHECKS_HU.items()}
    check = {"threshold": float(threshold),
             "flat": {f"{name} {hu:g} HU": {"probability": flat[name], "below_threshold": flat[name] < threshold}
                      for name, hu in FLAT_CHECKS_HU.items()}}
    if lung_patches_hu is not None and len(lung_patches_hu):
        p = np.asarray(predict(lung_patches_hu), float)
        check["nodule_free_lung_patches"] = {"patches": int(len(p)), "median_probability": float(np.median(p)),
                                             "called_malignant": float(np.mean(p >= threshold))}
    return check
