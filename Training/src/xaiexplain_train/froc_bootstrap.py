"""How sure is a FROC study's relative change? A percentile bootstrap over the images it evaluates.

A resample draws as many of the study's images (the test images the classifier calls positive) as it has,
with replacement; initial and augmented maps are compared on the same resample, and every method of a
seed on the same resamples, so that a mean over methods has replicates too. Over seeds (``froc-summary``)
replicate b of a mean over seeds is the mean of the seeds' replicates b: its interval is the spread from
the images evaluated, not from the seeds (renderings, splits, classifiers), which the standard deviation
over seeds shows beside it.
"""
from __future__ import annotations

import numpy as np
from xaiexplain.evaluate.localization import FrocEvents

BOOTSTRAP_SAMPLES = 1000
INTERVAL = "95 % percentile bootstrap"


def resample_weights(images: int, samples: int, seed: int) -> np.ndarray:
    """(samples, images): how often each image is drawn in each resample."""
    draws = np.random.default_rng([seed, 25]).integers(images, size=(samples, images))
    return np.stack([np.bincount(draw, minlength=images) for draw in draws]) if samples else np.zeros((0, images), int)


def relative_change(before: float, after: float) -> float:
    """(after - before) / before; NaN where there is nothing before to compare with."""
    return (after - before) / before if before > 0 else float("nan")


def change_replicates(initial: FrocEvents, augmented: FrocEvents, weights: np.ndarray, at: float) -> np.ndarray:
    """The relative change of the sensitivity at ``at`` false positives per image, one per resample."""
    return np.array([relative_change(initial.curve(w).sensitivity_at(at), augmented.curve(w).sensitivity_at(at))
                     for w in weights], float)


def interval(replicates) -> list[float] | None:
    """The 2.5 and 97.5 percentiles of the defined replicates (None: none is defined)."""
    values = np.asarray([np.nan if v is None else v for v in replicates], float)
    values = values[np.isfinite(values)]
    return [float(v) for v in np.percentile(values, [2.5, 97.5])] if values.size else None


def summary(replicates: np.ndarray) -> dict:
    """What ``froc.json`` keeps of a bootstrap: the interval and the replicates (NaN where a resample had
    no sensitivity before augmentation), so that ``froc-summary`` can combine seeds."""
    return {"interval_95": interval(replicates), "defined": int(np.isfinite(replicates).sum()),
            "replicates": [round(float(v), 6) for v in replicates]}


def mean_replicates(replicate_lists) -> np.ndarray:
    """Replicate b of a mean: the mean of the lists' replicates b (NaN where one of them is undefined); the
    lists are cut to the shortest."""
    lists = [np.asarray([np.nan if v is None else v for v in r], float) for r in replicate_lists]
    if not lists:
        return np.zeros(0)
    length = min(len(r) for r in lists)
    return np.mean([r[:length] for r in lists], axis=0)
