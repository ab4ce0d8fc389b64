"""Label images of relevance maps: for each side of a map's kind (malignant / benign evidence, brighter /
darker in the malignant version, or the one side of an unsigned sensitivity), the pixels at or above Otsu's
threshold of that side's values."""
from __future__ import annotations

import numpy as np
from skimage.filters import threshold_otsu

from xaiexplain.explainers.registry import KINDS, Kind


def label_image(relevance: np.ndarray, kind: Kind = KINDS["evidence"]) -> np.ndarray:
    """uint8 labels of ``relevance`` by ``kind.sides``; 0 where no side is strong."""
    labels = np.zeros(relevance.shape, np.uint8)
    for _, value, sign in kind.sides:
        side = sign * relevance
        positive = side[side > 0]
        if positive.size > 1 and np.ptp(positive) > 0:
            labels[side >= threshold_otsu(positive)] = value
    return labels
