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


def mean_with_interval(values) -> dict:
    """Mean and its 95 % t-interval."""
    from scipy import stats

    values = np.asarray(values, float)
    mean = float(values.mean())
    half = float(stats.t.ppf(0.975, len(values) - 1) * stats.sem(values)) if len(values) > 1 else float("nan")
    return {"mean": mean, "ci95": [mean - half, mean + half]}


def domain_transfer(p_original, p_malignant, p_benign, ssim_malignant, ssim_benign, threshold: float) -> dict:
    """Paper 1, 4.1: the classifier's mean probability on x, G-(x), G+(x) with 95 % intervals and paired
    two-tailed t-tests; the flip rates (G+ brings the decision to malignant, G- to benign, both at once);
    proximity SSIM(x, G+/-(x))."""
    from scipy import stats

    p_original, p_malignant, p_benign = (np.asarray(v, float) for v in (p_original, p_malignant, p_benign))
    to_malignant = p_malignant >= threshold
    to_benign = p_benign < threshold

    def paired(a, b):
        result = stats.ttest_rel(a, b)
        return {"t": float(result.statistic), "p": float(result.pvalue)}

    return {
        "images": int(len(p_original)),
        "threshold": float(threshold),
        "probability": {"x": mean_with_interval(p_original), "G-(x)": mean_with_interval(p_benign),
                        "G+(x)": mean_with_interval(p_malignant)},
        "paired_t_tests": {"G+(x) vs x": paired(p_malignant, p_original), "G-(x) vs x": paired(p_benign, p_original),
                           "G+(x) vs G-(x)": paired(p_malignant, p_benign)},
        "flip_rate": {"G+ to malignant": float(to_malignant.mean()), "G- to benign": float(to_benign.mean()),
                      "both": float((to_malignant & to_benign).mean())},
        "ssim": {"x, G+(x)": mean_with_interval(ssim_malignant), "x, G-(x)": mean_with_interval(ssim_benign)},
    }


def domain_transfer_table(result: dict) -> str:
    """The domain-transfer result as a Markdown table."""
    p = result["probability"]
    lines = ["| | mean | 95 % CI |", "|---|---|---|"]
    for name in ("x", "G-(x)", "G+(x)"):
        lines.append(f"| p(malignant \\| {name}) | {p[name]['mean']:.3f} | {p[name]['ci95'][0]:.3f} .. {p[name]['ci95'][1]:.3f} |")
    for name, entry in result["ssim"].items():
        lines.append(f"| SSIM({name}) | {entry['mean']:.3f} | {entry['ci95'][0]:.3f} .. {entry['ci95'][1]:.3f} |")
    lines.append("")
    lines.append("| paired two-tailed t-test | t | p |")
    lines.append("|---|---|---|")
    for name, entry in result["paired_t_tests"].items():
        lines.append(f"| {name} | {entry['t']:.2f} | {entry['p']:.2e} |")
    lines.append("")
    flips = result["flip_rate"]
    lines.append(f"Flip rate over {result['images']} images at threshold {result['threshold']:.3f}: G+ to malignant "
                 f"{flips['G+ to malignant']:.3f}, G- to benign {flips['G- to benign']:.3f}, both {flips['both']:.3f}.")
    return "\n".join(lines) + "\n"
