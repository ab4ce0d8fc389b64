"""The kinds of map a method makes (what its values mean, how they are labelled and drawn), apart from the
method registry so that what needs only the kinds (the Slicer module's display, in Slicer's own process)
imports no torch. Kinds are described in ``explainers.registry`` and docs/design.md."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Kind:
    """How the maps of a kind are presented, labelled and drawn, and reduced to evidence for the positive
    decision."""

    name: str
    meaning: str
    legend: str  # how its colours read, in a few words (figure column titles)
    sides: tuple[tuple[str, int, float], ...]  # (label name, label value, sign of the map values it marks)
    colour_map: str  # "diverging" (blue < 0 < red) or "sequential" (transparent 0 .. green high)
    present: Callable[[np.ndarray], np.ndarray]  # the method's raw map -> the map a user gets
    # M_t of Algorithm 1 (paper 2): the map reduced to non-negative evidence for the positive (malignant)
    # decision, what inpainting should remove. The paper does not say how a signed map is binarized; this
    # reduction is ours: the positive part of evidence, the magnitude of a sensitivity (as Simonyan et al.
    # draw saliency) or of cycle-am's change.
    positive_evidence: Callable[[np.ndarray], np.ndarray]

    @property
    def labels(self) -> dict[str, int]:
        """Label name -> value in the label images."""
        return {name: value for name, value, _ in self.sides}

    def for_decision(self, maps: np.ndarray, malignant: bool) -> np.ndarray:
        """What speaks for the decision: the evidence of the decided class's side, or for a kind without
        class sides the map reduced as Algorithm 1 sees it."""
        if self.name == "evidence":
            return np.maximum(maps if malignant else -maps, 0.0)
        return self.positive_evidence(maps)


def _unchanged(maps):
    return maps


KINDS = {kind.name: kind for kind in (
    Kind("evidence", "signed evidence: > 0 speaks for malignant, < 0 for benign", "red malignant, blue benign",
         (("malignant evidence", 1, 1.0), ("benign evidence", 2, -1.0)), "diverging", _unchanged,
         lambda maps: np.maximum(maps, 0.0)),
    Kind("sensitivity", "unsigned: how strongly the decision reacts to each pixel, for no class in particular",
         "green: relevant", (("relevant to the decision", 1, 1.0),), "sequential", np.abs, np.abs),
    Kind("change", "G+(x) - G-(x) in HU: brighter (> 0) or darker (< 0) in the malignant version",
         "red brighter, blue darker in G+", (("brighter in the malignant version", 1, 1.0), ("darker in the malignant version", 2, -1.0)),
         "diverging", _unchanged, np.abs),
)}
