"""Domain transfer of cycle-consistent activation maximization (paper 1, 3.3 and 4.1): does the classifier
call G+(x) malignant and G-(x) benign, and how close do the images stay?

The slices of one nodule are not independent samples, so the statistics are over nodules: each nodule's
mean over its patches, means with 95 % t-intervals over nodules, paired two-tailed t-tests over nodules
with their degrees of freedom (paper 1 reports t(df)). Flip rates count only the patches (or nodules) the
classifier decides the other way: G+ to malignant among those called benign, G- to benign among those
called malignant, at the bundle's threshold and at 0.5, with 95 % intervals from resampling nodules.
Patch-level figures stay beside them, marked as such.
"""
from __future__ import annotations

import numpy as np
from scipy import stats

IMAGES = ("x", "G-(x)", "G+(x)")
COMPARISONS = (("G+(x) vs x", "G+(x)", "x"), ("G-(x) vs x", "G-(x)", "x"), ("G+(x) vs G-(x)", "G+(x)", "G-(x)"))
BOOTSTRAP_SAMPLES = 2000


def mean_with_interval(values) -> dict:
    """Mean and its 95 % t-interval."""
    values = np.asarray(values, float)
    mean = float(values.mean())
    half = float(stats.t.ppf(0.975, len(values) - 1) * stats.sem(values)) if len(values) > 1 else float("nan")
    return {"mean": mean, "ci95": [mean - half, mean + half], "n": int(len(values))}


def paired_t_test(a, b) -> dict:
    """Two-tailed paired t-test of a against b: t, its degrees of freedom, p, and the mean difference."""
    result = stats.ttest_rel(a, b)
    return {"t": float(result.statistic), "df": int(len(a) - 1), "p": float(result.pvalue),
            "mean_difference": float(np.mean(np.asarray(a, float) - np.asarray(b, float)))}


def group_means(values, groups) -> np.ndarray:
    """The mean of ``values`` within each group, groups in sorted order."""
    _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    return np.bincount(inverse, weights=np.asarray(values, float)) / counts


def conditional_rate(eligible, flipped, probability, groups, rng, samples: int = BOOTSTRAP_SAMPLES) -> dict:
    """The share of ``flipped`` among ``eligible`` items, with a 95 % interval from resampling groups, and the
    mean ``probability`` (of the counterfactual) over the eligible items."""
    eligible, flipped = np.asarray(eligible, bool), np.asarray(flipped, bool) & np.asarray(eligible, bool)
    _, inverse = np.unique(groups, return_inverse=True)
    per_group_eligible = np.bincount(inverse, weights=eligible)
    per_group_flipped = np.bincount(inverse, weights=flipped)
    count = int(eligible.sum())
    entry = {"rate": float(flipped.sum() / count) if count else None, "eligible": count,
             "eligible_groups": int((per_group_eligible > 0).sum()),
             "mean_probability": float(np.asarray(probability, float)[eligible].mean()) if count else None}
    if count:
        draws = rng.integers(0, len(per_group_eligible), (samples, len(per_group_eligible)))
        denominators = per_group_eligible[draws].sum(axis=1)
        rates = per_group_flipped[draws].sum(axis=1)[denominators > 0] / denominators[denominators > 0]
        entry["ci95"] = [float(np.percentile(rates, 2.5)), float(np.percentile(rates, 97.5))]
    return entry


def flip_rates(p_original, p_malignant, p_benign, threshold: float, groups, rng) -> dict:
    """G+ to malignant among the items called benign, G- to benign among those called malignant."""
    called_malignant = p_original >= threshold
    return {"threshold": float(threshold),
            "G+ to malignant, among those called benign": conditional_rate(
                ~called_malignant, p_malignant >= threshold, p_malignant, groups, rng),
            "G- to benign, among those called malignant": conditional_rate(
                called_malignant, p_benign < threshold, p_benign, groups, rng)}


def domain_transfer(p_original, p_malignant, p_benign, ssim_malignant, ssim_benign, threshold: float, nodules,
                    seed: int = 0, through_blur: dict | None = None, ssim_on_ct_range: tuple | None = None) -> dict:
    """Paper 1's domain-transfer evaluation over nodules (``nodules``: the nodule of each patch), with the
    conditional flip rates and patch-level figures beside; ``through_blur``: the probabilities of x, G-(x)
    and G+(x) read through a slight blur (``counterfactuals.probabilities_through_blur``), reported beside;
    ``ssim_on_ct_range``: SSIM(x, G+(x)) and SSIM(x, G-(x)) on the whole CT range, beside the windowed ones."""
    per_patch = {"x": np.asarray(p_original, float), "G-(x)": np.asarray(p_benign, float),
                 "G+(x)": np.asarray(p_malignant, float)}
    ssim = {"x, G+(x)": np.asarray(ssim_malignant, float), "x, G-(x)": np.asarray(ssim_benign, float)}
    if ssim_on_ct_range is not None:
        ssim.update({f"{name}, on the CT range": np.asarray(values, float)
                     for name, values in zip(("x, G+(x)", "x, G-(x)"), ssim_on_ct_range)})
    nodules = np.asarray(nodules)
    per_nodule = {name: group_means(values, nodules) for name, values in per_patch.items()}
    rng = np.random.default_rng(seed)
    single_nodules = np.arange(len(per_nodule["x"]))
    thresholds = {"at the bundle's threshold": threshold, "at 0.5": 0.5}
    result = {
        "patches": int(len(nodules)), "nodules": int(len(single_nodules)), "threshold": float(threshold),
        "per_nodule": {
            "probability": {name: mean_with_interval(per_nodule[name]) for name in IMAGES},
            "paired_t_tests": {name: paired_t_test(per_nodule[a], per_nodule[b]) for name, a, b in COMPARISONS},
            "ssim": {name: mean_with_interval(group_means(values, nodules)) for name, values in ssim.items()},
            # a nodule's decision by the mean over its slices, as `explain` makes it
            "flip_rates": {label: flip_rates(per_nodule["x"], per_nodule["G+(x)"], per_nodule["G-(x)"], t,
                                             single_nodules, rng) for label, t in thresholds.items()},
        },
        "per_patch_flip_rates": {label: flip_rates(per_patch["x"], per_patch["G+(x)"], per_patch["G-(x)"], t,
                                                   nodules, rng) for label, t in thresholds.items()},
        "patch_level": {
            "note": "over patches as if they were independent, which the slices of one nodule are not",
            "probability": {name: mean_with_interval(per_patch[name]) for name in IMAGES},
            "paired_t_tests": {name: paired_t_test(per_patch[a], per_patch[b]) for name, a, b in COMPARISONS},
            "ssim": {name: mean_with_interval(values) for name, values in ssim.items()},
        },
    }
    if through_blur is not None:
        result["per_nodule"]["probability_through_blur"] = {
            name: mean_with_interval(group_means(through_blur[name], nodules)) for name in IMAGES}
    return result


def counterfactual_transfer(classifier, images_hu: np.ndarray, pair, nodules) -> dict:
    """``domain_transfer`` of the counterfactuals ``pair`` of ``images_hu`` for ``classifier``: SSIM in its
    window and on the CT range, probabilities also read through a 1 px blur."""
    from xaiexplain.explainers.counterfactuals import probabilities_through_blur, proximity

    return domain_transfer(classifier.predict(images_hu), pair.malignant_probability, pair.benign_probability,
                           *proximity(classifier, images_hu, pair), classifier.threshold, nodules,
                           through_blur=probabilities_through_blur(classifier, images_hu, pair),
                           ssim_on_ct_range=proximity(classifier, images_hu, pair, on_ct_range=True))


def _interval(entry: dict) -> str:
    return f"{entry['ci95'][0]:.3f} .. {entry['ci95'][1]:.3f}"


def _flip_lines(rates: dict, unit: str) -> list[str]:
    lines = []
    for label, entry in rates.items():
        for name in ("G+ to malignant, among those called benign", "G- to benign, among those called malignant"):
            rate = entry[name]
            if rate["rate"] is None:
                shown, mean = "no such " + unit, ""
            else:
                shown, mean = f"{rate['rate']:.3f} [{_interval(rate)}]", f"{rate['mean_probability']:.3f}"
            lines.append(f"| {label} ({entry['threshold']:.3f}) | {name.replace('those', unit)} | {shown} | "
                         f"{rate['eligible']} | {mean} |")
    return lines


def domain_transfer_table(result: dict) -> str:
    """The domain-transfer result as Markdown tables: per nodule first, patch level last."""
    nodule = result["per_nodule"]
    lines = [f"Over {result['nodules']} nodules ({result['patches']} patches; each nodule's mean over its patches):",
             "", "| | mean over nodules | 95 % CI |", "|---|---|---|"]
    for name in IMAGES:
        lines.append(f"| p(malignant \\| {name}) | {nodule['probability'][name]['mean']:.3f} | "
                     f"{_interval(nodule['probability'][name])} |")
    for name, entry in nodule.get("probability_through_blur", {}).items():
        lines.append(f"| p(malignant \\| {name}) through a 1 px blur | {entry['mean']:.3f} | {_interval(entry)} |")
    for name, entry in nodule["ssim"].items():
        lines.append(f"| SSIM({name}) | {entry['mean']:.3f} | {_interval(entry)} |")
    lines += ["", "| paired two-tailed t-test over nodules | t(df) | p | mean difference |", "|---|---|---|---|"]
    for name, entry in nodule["paired_t_tests"].items():
        lines.append(f"| {name} | t({entry['df']}) = {entry['t']:.2f} | {entry['p']:.2e} | "
                     f"{entry['mean_difference']:+.3f} |")
    lines += ["", "| flip rate | which | rate [95 % CI, nodules resampled] | of | mean p(malignant) of the "
              "counterfactual |", "|---|---|---|---|---|"]
    lines += _flip_lines(result["per_patch_flip_rates"], "patches")
    lines += _flip_lines(nodule["flip_rates"], "nodules")
    patch = result["patch_level"]
    lines += ["", f"Patch level ({patch['note']}): mean p(malignant) "
              + ", ".join(f"{patch['probability'][name]['mean']:.3f} on {name}" for name in IMAGES) + "; "
              + "; ".join(f"{name} t({entry['df']}) = {entry['t']:.2f}" for name, entry in patch["paired_t_tests"].items())
              + "."]
    return "\n".join(lines) + "\n"
