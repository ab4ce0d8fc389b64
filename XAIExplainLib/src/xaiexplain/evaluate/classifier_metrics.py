"""Classifier metrics of paper 1, Table 1, with bootstrap 95 % confidence intervals, and the decision
threshold of paper 2 (the validation ROC point closest to the top-left corner)."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

METRIC_NAMES = ("accuracy", "f1", "sensitivity", "specificity", "ppv", "npv", "informedness", "markedness",
                "mcc", "auc")


def threshold_closest_to_top_left(labels, probabilities) -> float:
    """The probability threshold of the ROC point nearest to (FPR 0, TPR 1)."""
    fpr, tpr, thresholds = roc_curve(labels, probabilities)
    best = int(np.argmin(fpr ** 2 + (1 - tpr) ** 2))
    return float(np.clip(thresholds[best], 0.0, 1.0))


def _safe_ratio(numerator, denominator) -> float:
    return float(numerator / denominator) if denominator else float("nan")


def classification_metrics(labels, probabilities, threshold: float) -> dict[str, float]:
    labels = np.asarray(labels).astype(bool)
    probabilities = np.asarray(probabilities, float)
    predicted = probabilities >= threshold
    tp = int(np.sum(predicted & labels))
    tn = int(np.sum(~predicted & ~labels))
    fp = int(np.sum(predicted & ~labels))
    fn = int(np.sum(~predicted & labels))
    sensitivity = _safe_ratio(tp, tp + fn)
    specificity = _safe_ratio(tn, tn + fp)
    ppv = _safe_ratio(tp, tp + fp)
    npv = _safe_ratio(tn, tn + fn)
    mcc_denominator = np.sqrt(float(tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return {
        "accuracy": _safe_ratio(tp + tn, len(labels)),
        "f1": _safe_ratio(2 * tp, 2 * tp + fp + fn),
        "sensitivity": sensitivity,
        "specificity": specificity,
        "ppv": ppv,
        "npv": npv,
        "informedness": sensitivity + specificity - 1,
        "markedness": ppv + npv - 1,
        "mcc": _safe_ratio(tp * tn - fp * fn, mcc_denominator),
        "auc": float(roc_auc_score(labels, probabilities)) if 0 < labels.sum() < len(labels) else float("nan"),
    }


def bootstrap_metrics(labels, probabilities, threshold: float, groups=None, samples: int = 1000,
                      seed: int = 0) -> dict[str, dict]:
    """Each metric with its 95 % percentile bootstrap interval. With ``groups`` (e.g. the nodule of each
    patch) whole groups are resampled, since the patches of one nodule are not independent."""
    labels = np.asarray(labels)
    probabilities = np.asarray(probabilities, float)
    groups = np.arange(len(labels)) if groups is None else np.asarray(groups)
    unique, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(len(unique))]
    rng = np.random.default_rng(seed)
    draws = {name: [] for name in METRIC_NAMES}
    for _ in range(samples):
        chosen = np.concatenate([members[g] for g in rng.integers(0, len(unique), len(unique))])
        values = classification_metrics(labels[chosen], probabilities[chosen], threshold)
        for name in METRIC_NAMES:
            draws[name].append(values[name])
    point = classification_metrics(labels, probabilities, threshold)
    return {name: {"value": point[name], "ci95": [float(np.nanpercentile(draws[name], 2.5)),
                                                 float(np.nanpercentile(draws[name], 97.5))]}
            for name in METRIC_NAMES}


def bootstrap_specificity(probabilities, threshold: float, groups=None, samples: int = 1000, seed: int = 0) -> dict:
    """The share of negatives (all of ``probabilities``: for example nodule-free lung) called benign, with its 95 %
    percentile bootstrap interval (whole ``groups``, such as patients, resampled), their count and median score."""
    probabilities = np.asarray(probabilities, float)
    if not len(probabilities):
        return {"value": None, "ci95": None, "patches": 0, "median_probability": None}
    groups = np.arange(len(probabilities)) if groups is None else np.asarray(groups)
    unique, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(len(unique))]
    benign = probabilities < threshold
    rng = np.random.default_rng(seed)
    draws = [benign[np.concatenate([members[g] for g in rng.integers(0, len(unique), len(unique))])].mean()
             for _ in range(samples)]
    return {"value": float(benign.mean()), "ci95": [float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))],
            "patches": int(len(probabilities)), "median_probability": float(np.median(probabilities))}
