"""Where is the evidence? Localization measures of relevance maps against ground-truth masks, and the
candidates and FROC of paper 2.

The measures take non-negative evidence: a map reduced to what speaks for the decision, as its kind
defines it (``xaiexplain.explainers.registry.Kind.for_decision``).

- ``pointing_game``: does the strongest evidence fall in the mask (Zhang et al. 2018)?
- ``relevance_mass_accuracy``: the share of the evidence inside the mask (Arras et al. 2022);
- ``relevance_rank_accuracy``: of the K pixels with the most evidence, K the mask's size, the share inside
  the mask (Arras et al. 2022);
- ``local_maxima`` and ``froc``: candidate lesions from a map and paper 2's FROC, a candidate counting as
  a detection when its disc overlaps a lesion.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


def pointing_game(evidence: np.ndarray, mask: np.ndarray, tolerance_px: int = 0) -> float:
    """1.0 when the pixel of most evidence lies in ``mask`` (dilated by ``tolerance_px``), else 0.0;
    NaN for a map without evidence or an empty mask."""
    if not mask.any() or not (evidence > 0).any():
        return float("nan")
    if tolerance_px:
        mask = ndimage.binary_dilation(mask, iterations=tolerance_px)
    return float(mask.flat[int(np.argmax(evidence))])


def relevance_mass_accuracy(evidence: np.ndarray, mask: np.ndarray) -> float:
    """Evidence inside the mask / all evidence; NaN without evidence or mask."""
    total = float(evidence.sum())
    if total <= 0 or not mask.any():
        return float("nan")
    return float(evidence[mask].sum()) / total


def relevance_rank_accuracy(evidence: np.ndarray, mask: np.ndarray) -> float:
    """Share of the mask's pixels among the |mask| pixels of most evidence (ties broken by position)."""
    size = int(mask.sum())
    if size == 0 or not (evidence > 0).any():
        return float("nan")
    top = np.argsort(-evidence.ravel(), kind="stable")[:size]
    return float(mask.ravel()[top].mean())


def local_maxima(evidence: np.ndarray, count: int, suppression_radius_px: float) -> list[tuple[int, int, float]]:
    """Up to ``count`` candidates (row, column, score) from a 2D map: repeatedly the highest remaining
    pixel, then everything within the radius of it masked out (paper 2's candidate extraction)."""
    remaining = np.array(evidence, float, copy=True)
    rows, columns = np.indices(remaining.shape)
    candidates = []
    for _ in range(count):
        index = int(np.argmax(remaining))
        score = float(remaining.flat[index])
        if not np.isfinite(score) or score <= 0:
            break
        r, c = divmod(index, remaining.shape[1])
        candidates.append((r, c, score))
        remaining[(rows - r) ** 2 + (columns - c) ** 2 <= suppression_radius_px ** 2] = -np.inf
    return candidates


@dataclass
class FrocCurve:
    false_positives_per_image: np.ndarray  # increasing
    sensitivity: np.ndarray  # share of lesions hit at that rate

    def sensitivity_at(self, false_positives_per_image: float) -> float:
        """The highest sensitivity reached with at most that many false positives per image."""
        reached = self.sensitivity[self.false_positives_per_image <= false_positives_per_image]
        return float(reached.max()) if reached.size else 0.0


def froc(candidates: list[list[tuple[int, int, float]]], lesions: list[np.ndarray],
         detection_radius_px: float = 0.0) -> FrocCurve:
    """FROC over images (paper 2): ``candidates[i]`` (row, column, score) of image i, ``lesions[i]`` its
    label map (0 background, 1..L lesions). A candidate's detection area is the disc of the radius around
    it: overlapping a lesion not yet hit, it is a true positive (for every such lesion); overlapping only
    lesions already hit, neither; overlapping none, a false positive. The curve sweeps the score
    threshold from high to low."""
    offsets = [(dr, dc) for dr in range(-int(detection_radius_px), int(detection_radius_px) + 1)
               for dc in range(-int(detection_radius_px), int(detection_radius_px) + 1)
               if dr * dr + dc * dc <= detection_radius_px ** 2]
    events = []  # (score, image, lesion labels the detection area overlaps)
    total_lesions = 0
    for image, (image_candidates, labels) in enumerate(zip(candidates, lesions)):
        total_lesions += len(np.setdiff1d(np.unique(labels), [0]))
        height, width = labels.shape
        for r, c, score in image_candidates:
            touched = {int(labels[r + dr, c + dc]) for dr, dc in offsets
                       if 0 <= r + dr < height and 0 <= c + dc < width} - {0}
            events.append((score, image, touched))
    events.sort(key=lambda event: -event[0])
    hit = set()
    true_positives = false_positives = 0
    fps, sensitivity = [0.0], [0.0]
    for _, image, touched in events:
        if not touched:
            false_positives += 1
        new = {(image, label) for label in touched} - hit
        hit |= new
        true_positives += len(new)
        fps.append(false_positives / max(len(candidates), 1))
        sensitivity.append(true_positives / max(total_lesions, 1))
    return FrocCurve(np.array(fps), np.array(sensitivity))
