"""How good is an explanation? Measures on relevance maps with known answers from the phantom.

All maps are signed (> 0 speaks for malignant). The *evidence for the decision* of a map is its part
that speaks for the class the classifier chose: max(R, 0) for a malignant decision, max(-R, 0) for a
benign one. Localization and faithfulness are measured on it.

- ``pointing_game``: does the strongest evidence fall in the mask (Zhang et al. 2018)?
- ``relevance_mass_accuracy``: the share of the evidence inside the mask (Arras et al. 2022);
- ``relevance_rank_accuracy``: of the K pixels with the most evidence, K the mask's size, the share inside
  the mask (Arras et al. 2022);
- ``deletion_insertion``: RISE's deletion and insertion curves (Petsiuk et al. 2018): the probability of
  the decided class as the pixels with the most evidence are replaced by lung parenchyma (deletion: lower
  area is better) or restored onto it (insertion: higher is better);
- ``rank_correlation``: Spearman correlation of |map| between two maps, for the model-parameter
  randomization test (Adebayo et al. 2018): low means the map depends on what the model learned;
- ``local_maxima`` and ``froc``: candidates from a map and the free-response ROC curve (paper 2).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage, stats
from scipy.integrate import trapezoid


def evidence_for_decision(relevance: np.ndarray, malignant: bool | np.ndarray) -> np.ndarray:
    """max(sign * R, 0) with sign +1 for a malignant decision, -1 for benign; per image for (N, H, W)."""
    relevance = np.asarray(relevance, float)
    sign = np.where(np.asarray(malignant), 1.0, -1.0)
    if relevance.ndim == 3:
        sign = sign.reshape(-1, 1, 1)
    return np.maximum(sign * relevance, 0.0)


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


@dataclass
class DeletionInsertion:
    fractions: np.ndarray  # (S,) share of pixels removed / inserted
    deletion: np.ndarray  # (N, S) probability of the decided class
    insertion: np.ndarray  # (N, S)

    @property
    def deletion_auc(self) -> np.ndarray:
        return trapezoid(self.deletion, self.fractions, axis=1)

    @property
    def insertion_auc(self) -> np.ndarray:
        return trapezoid(self.insertion, self.fractions, axis=1)


# Below this a CT pixel is lung (or air); above it, soft tissue.
LUNG_BELOW_HU = -500.0
LUNG_HU = -850.0


def lung_reference(images: np.ndarray) -> np.ndarray:
    """Per image, the image with every pixel set to its lung parenchyma: the median of its pixels below
    -500 HU (-850 HU when it has none). Removing a pixel in CT means turning it into the lung around the
    nodule; a blurred copy, RISE's choice for photographs, is no neutral reference here, since a blurred
    nodule looks like a poorly defined one, which is malignant."""
    images = np.asarray(images, np.float32)
    lung = [np.median(image[image < LUNG_BELOW_HU]) if (image < LUNG_BELOW_HU).any() else LUNG_HU for image in images]
    return np.broadcast_to(np.asarray(lung, np.float32)[:, None, None], images.shape).copy()


def deletion_insertion(images: np.ndarray, evidence: np.ndarray, class_probability, steps: int = 16,
                       reference: np.ndarray | None = None, seed: int = 0) -> DeletionInsertion:
    """RISE deletion and insertion for images (N, H, W) and their evidence maps (N, H, W).

    ``class_probability(images) -> (N,)`` is the probability of each image's decided class. Deletion
    replaces pixels of ``images`` with those of ``reference`` (default: ``lung_reference``), most evidence
    first; insertion restores them onto the reference. Pixels of equal evidence (the zeros of a sparse
    map) go in random order, so a map without evidence scores like a random one rather than like a
    raster scan. All images of a step are classified in one batch."""
    images = np.asarray(images, np.float32)
    n, h, w = images.shape
    reference = lung_reference(images) if reference is None else np.asarray(reference, np.float32)
    tie_breaker = np.random.default_rng(seed).random((n, h * w))
    order = np.lexsort((tie_breaker, -np.asarray(evidence, float).reshape(n, -1)), axis=-1)
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(h * w)[None, :].repeat(n, 0), axis=1)
    rank = rank.reshape(n, h, w)
    fractions = np.linspace(0.0, 1.0, steps + 1)
    deletion, insertion = [], []
    for fraction in fractions:
        changed = rank < int(round(fraction * h * w))
        deletion.append(np.where(changed, reference, images))
        insertion.append(np.where(changed, images, reference))
    probabilities = np.asarray(class_probability(np.concatenate(deletion + insertion)), float)
    probabilities = probabilities.reshape(2, len(fractions), n)
    return DeletionInsertion(fractions=fractions, deletion=probabilities[0].T, insertion=probabilities[1].T)


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman correlation of |a| and |b| (flattened); NaN when either is constant."""
    a, b = np.abs(np.ravel(a)), np.abs(np.ravel(b))
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(stats.spearmanr(a, b).statistic)


# -- candidates and FROC ----------------------------------------------------------------------------------

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
