"""Label images of relevance maps: the pixels that speak most for each side, by Otsu's threshold."""
from __future__ import annotations

import numpy as np
from skimage.filters import threshold_otsu

from xaiexplain.explainers.registry import EVIDENCE_LABELS


def evidence_labels(relevance: np.ndarray, values=EVIDENCE_LABELS) -> np.ndarray:
    """uint8 label map: ``values["malignant evidence"]`` (1) where the relevance is at or above Otsu's
    threshold of the positive values, ``values["benign evidence"]`` (2) likewise for the negative values,
    0 elsewhere."""
    labels = np.zeros(relevance.shape, np.uint8)
    for value, sign in ((values["malignant evidence"], 1.0), (values["benign evidence"], -1.0)):
        side = sign * relevance
        positive = side[side > 0]
        if positive.size > 1 and np.ptp(positive) > 0:
            labels[side >= threshold_otsu(positive)] = value
    return labels
