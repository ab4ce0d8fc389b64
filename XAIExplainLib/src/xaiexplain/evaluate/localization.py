"""Where is the evidence? Localization measures of relevance maps against ground-truth masks, and the
candidates and FROC of paper 2.

The measures take non-negative evidence: a map reduced to what speaks for the decision, as its kind
defines it (``xaiexplain.explainers.registry.Kind.for_decision``).

- ``pointing_game``: does the strongest evidence fall in the mask (Zhang et al. 2018)?
- ``relevance_mass_accuracy``: the share of the evidence inside the mask (Arras et al. 2022);
- ``relevance_rank_accuracy``: of the K pixels with the most evidence, K the mask's size, the share inside
  the mask (Arras et al. 2022);
- ``local_maxima`` and ``froc``: candidate lesions from a map and paper 2's FROC, a candidate counting as
  a detection when its disc overlaps a lesion; ``FrocEvents``: the same FROC for any weighting of the
  images (a bootstrap resample's).
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


def local_maxima(evidence: np.ndarray, count: int | None, suppression_radius_px: float) -> list[tuple[int, int, float]]:
    """Candidates (row, column, score) from a 2D map, highest first: repeatedly the highest remaining pixel,
    then everything within the radius of it masked out (paper 2's candidate extraction), until no pixel above
    zero remains or, with a ``count``, ``count`` are taken (None: no cap)."""
    remaining = np.array(evidence, float, copy=True)
    height, width = remaining.shape
    reach = int(np.floor(suppression_radius_px))
    rows, columns = np.mgrid[-reach:reach + 1, -reach:reach + 1]
    disc = rows ** 2 + columns ** 2 <= suppression_radius_px ** 2
    candidates = []
    while count is None or len(candidates) < count:
        index = int(np.argmax(remaining))
        score = float(remaining.flat[index])
        if not np.isfinite(score) or score <= 0:
            break
        r, c = divmod(index, width)
        candidates.append((r, c, score))
        r0, r1, c0, c1 = max(r - reach, 0), min(r + reach + 1, height), max(c - reach, 0), min(c + reach + 1, width)
        remaining[r0:r1, c0:c1][disc[r0 - r + reach:r1 - r + reach, c0 - c + reach:c1 - c + reach]] = -np.inf
    return candidates


@dataclass
class FrocCurve:
    false_positives_per_image: np.ndarray  # increasing
    sensitivity: np.ndarray  # share of lesions hit at that rate

    def sensitivity_at(self, false_positives_per_image: float) -> float:
        """The highest sensitivity reached with at most that many false positives per image."""
        reached = self.sensitivity[self.false_positives_per_image <= false_positives_per_image]
        return float(reached.max()) if reached.size else 0.0


@dataclass
class ImageOutcomes:
    """One image's candidates as the FROC counts them, highest score first (ties in the order given)."""

    scores: np.ndarray  # float
    false_positive: np.ndarray  # bool: the detection area overlaps no lesion
    new_lesions: np.ndarray  # int: the lesions this candidate is the first to hit
    lesions: int  # lesions in the image


def image_outcomes(candidates: list[tuple[int, int, float]], labels: np.ndarray,
                   detection_radius_px: float = 0.0) -> ImageOutcomes:
    """``candidates`` (row, column, score) of one image against its label map (0 background, 1..L lesions):
    a candidate's detection area is the disc of the radius around it; overlapping a lesion not yet hit, it
    hits it (every such lesion); overlapping only lesions already hit, it is neither; overlapping none, it
    is a false positive."""
    ordered = sorted(candidates, key=lambda candidate: -candidate[2])
    reach = int(detection_radius_px)
    dr, dc = (offsets.ravel() for offsets in np.mgrid[-reach:reach + 1, -reach:reach + 1])
    inside_disc = dr ** 2 + dc ** 2 <= detection_radius_px ** 2
    dr, dc = dr[inside_disc], dc[inside_disc]
    height, width = labels.shape
    if ordered:
        r = np.array([c[0] for c in ordered])[:, None] + dr
        c = np.array([c[1] for c in ordered])[:, None] + dc
        inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
        touched = np.where(inside, labels[r.clip(0, height - 1), c.clip(0, width - 1)], 0)
    else:
        touched = np.zeros((0, len(dr)), labels.dtype)
    new_lesions = np.zeros(len(ordered), int)
    hit = set()
    for n in np.flatnonzero((touched > 0).any(axis=1)):
        fresh = set(touched[n][touched[n] > 0].tolist()) - hit
        hit |= fresh
        new_lesions[n] = len(fresh)
    return ImageOutcomes(scores=np.array([c[2] for c in ordered], float), false_positive=~(touched > 0).any(axis=1),
                         new_lesions=new_lesions, lesions=len(np.setdiff1d(np.unique(labels), [0])))


class FrocEvents:
    """The candidates of several images in the FROC's order (score from high to low, ties in image order),
    from which the curve of any weighting of the images follows: a bootstrap resample weighs each image by
    how often it was drawn."""

    def __init__(self, outcomes: list[ImageOutcomes]):
        sizes = [len(o.scores) for o in outcomes]
        scores = np.concatenate([o.scores for o in outcomes] + [np.zeros(0)])
        order = np.argsort(-scores, kind="stable")
        self.image = np.repeat(np.arange(len(outcomes)), sizes)[order]
        self.false_positive = np.concatenate([o.false_positive for o in outcomes] + [np.zeros(0, bool)])[order]
        self.new_lesions = np.concatenate([o.new_lesions for o in outcomes] + [np.zeros(0, int)])[order]
        self.lesions = np.array([o.lesions for o in outcomes], int)

    def curve(self, weights: np.ndarray | None = None) -> FrocCurve:
        """The FROC with image n counted ``weights[n]`` times (default: once each)."""
        weights = np.ones(len(self.lesions), int) if weights is None else np.asarray(weights, int)
        per_event = weights[self.image]
        false_positives = np.cumsum(per_event * self.false_positive)
        hits = np.cumsum(per_event * self.new_lesions)
        return FrocCurve(np.concatenate([[0.0], false_positives / max(int(weights.sum()), 1)]),
                         np.concatenate([[0.0], hits / max(int((weights * self.lesions).sum()), 1)]))


def froc(candidates: list[list[tuple[int, int, float]]], lesions: list[np.ndarray],
         detection_radius_px: float = 0.0) -> FrocCurve:
    """FROC over images (paper 2): ``candidates[i]`` (row, column, score) of image i, ``lesions[i]`` its
    label map (0 background, 1..L lesions), each candidate counted as ``image_outcomes`` says. The curve
    sweeps the score threshold from high to low, one point per candidate."""
    return FrocEvents([image_outcomes(c, labels, detection_radius_px)
                       for c, labels in zip(candidates, lesions)]).curve()
