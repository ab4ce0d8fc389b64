"""Is the evidence what the classifier uses? RISE deletion and insertion (Petsiuk et al. 2018) and the
rank correlation of the model-parameter randomization test (Adebayo et al. 2018)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats
from scipy.integrate import trapezoid


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
    per_image = np.asarray(lung, np.float32).reshape((len(images),) + (1,) * (images.ndim - 1))
    return np.broadcast_to(per_image, images.shape).copy()


def deletion_insertion(images: np.ndarray, evidence: np.ndarray, class_probability, steps: int = 16,
                       reference: np.ndarray | None = None, seed: int = 0) -> DeletionInsertion:
    """RISE deletion and insertion for images (N, H, W) and their evidence maps (N, H, W); for a 2.5D
    model's images (N, S, H, W), maps of that shape, or (N, H, W) maps, which weigh each pixel's S values alike.

    ``class_probability(images) -> (N,)`` is the probability of each image's decided class. Deletion
    replaces pixels of ``images`` with those of ``reference`` (default: ``lung_reference``), most evidence
    first; insertion restores them onto the reference. Pixels of equal evidence (the zeros of a sparse
    map) go in random order, so a map without evidence scores like a random one rather than like a
    raster scan. All images of a step are classified in one batch."""
    images = np.asarray(images, np.float32)
    evidence = np.asarray(evidence, float)
    if evidence.ndim == images.ndim - 1:
        evidence = np.broadcast_to(evidence[:, None], images.shape)
    n, values = len(images), images[0].size
    reference = lung_reference(images) if reference is None else np.asarray(reference, np.float32)
    tie_breaker = np.random.default_rng(seed).random((n, values))
    order = np.lexsort((tie_breaker, -evidence.reshape(n, -1)), axis=-1)
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(values)[None, :].repeat(n, 0), axis=1)
    rank = rank.reshape(images.shape)
    fractions = np.linspace(0.0, 1.0, steps + 1)
    deletion, insertion = [], []
    for fraction in fractions:
        changed = rank < int(round(fraction * values))
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
