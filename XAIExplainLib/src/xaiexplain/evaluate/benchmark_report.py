"""What ``xaiexplain benchmark`` writes from its summary: ``benchmark.md`` (the table, the counterfactual
validity, the references, the costs against their targets) and the plots."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from xaiexplain.explainers import registry

SERIES_TARGET_SECONDS = 5.0


def _format(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


TABLE_HEADER = ("method", "explained", "passes", "ended below T", "mask / pass", "pointing", "mass acc.", "rank acc.", "spicule mass",
                "calcification mass", "calcified explained", "deletion AUC (lower)", "insertion AUC (higher)", "randomization rho (lower)",
                "ms / patch", "x input gradient", "peak MB added")


def table_rows(summary: dict) -> list[list[str]]:
    """The benchmark table's cells, one row per method, in TABLE_HEADER's order."""
    rows = []
    for method, entry in summary["methods"].items():
        nodule = entry["nodule"]
        if "randomization_not_applicable" in entry:
            randomization = "not applicable"
        elif entry["randomization_spearman"] is None and entry["randomized_maps_empty"] == summary["randomization_patches"]:
            randomization = "no map"
        else:
            randomization = _format(entry["randomization_spearman"], 2)
        passes = _format(entry.get("iterations_mean"), 1) if "iterations_mean" in entry else ""
        mask = f"{100 * entry['mask_fraction_median']:.1f} %" if entry.get("mask_fraction_median") is not None else ""
        below = (f"{entry['ended_below_threshold']}/{len(entry['measured_patches'])}"
                 if "ended_below_threshold" in entry else "")
        rows.append([method, f"{entry['patches_with_evidence']}/{len(entry['measured_patches'])}", passes, below, mask,
                     _format(nodule["pointing_game"], 2), _format(nodule["mass_accuracy"]),
                     _format(nodule["rank_accuracy"]), _format(entry["spicule"]["mass_accuracy"]),
                     _format(entry["calcification"]["mass_accuracy"]),
                     f"{entry['calcification']['patches']}/{summary['patches_with_calcification']}",
                     _format(entry.get("deletion_auc")),
                     _format(entry.get("insertion_auc")), randomization,
                     f"{1000 * entry['seconds_per_patch']:.1f}", f"{entry['ratio_to_input_gradient']:.1f}",
                     f"{entry['peak_memory_mb']:.0f}"])
    return rows


def markdown_table(summary: dict) -> str:
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(summary)]
    return "\n".join(lines) + "\n"


def markdown_report(summary: dict) -> str:
    lines = [f"# Explanation benchmark ({'quick' if summary['quick'] else 'full'})", "",
             f"{summary['patches']} held-out phantom nodules (one patch each: {summary['labels']['malignant']} "
             f"malignant, {summary['labels']['benign']} benign by the LIDC readers; the classifier calls "
             f"{summary['decided_malignant']} malignant at threshold {summary['threshold']:.3f}). Every method, and its "
             f"iterative: variant beside it, is measured on the same {summary['decided_malignant']} patches called "
             f"malignant, on its map reduced to evidence for that decision (the positive part of evidence, the "
             f"magnitude of a sensitivity or change), as Algorithm 1 works on it: localization where a method "
             f"gives any (*explained*), pointing with a {summary['pointing_tolerance_px']} px tolerance; "
             f"faithfulness by RISE (pixels replaced by the patch's lung parenchyma). *passes*: mean passes of "
             f"Algorithm 1; *ended below T*: patches whose prediction Algorithm 1 brought below the threshold before "
             f"its last pass (the others stop at T); *mask / pass*: median share of the patch inpainted per pass; "
             f"*spicule mass* and *calcification mass*: on all {summary['patches']} patches that have the "
             f"structure ({summary['patches_with_calcification']} calcified: *calcified explained*), on the "
             f"evidence for the decision made (benign evidence where a patch is called benign; calcification "
             f"speaks for benign); iterative methods explain the patches called malignant only. "
             f"Randomization compares maps on {summary['randomization_patches']} patches (*no map*: the "
             f"randomized classifier calls none of them malignant, so an iterative method has nothing to augment; "
             f"*not applicable*: cycle-am's generators belong to the trained classifier, so they are not run for "
             f"the randomized one). Peak MB added: resident memory above what the process already held. One "
             f"input-gradient pass of the classifier on the batch (forward, and the gradient with respect to the input "
             f"only): {1000 * summary['input_gradient_seconds']:.1f} ms"
             + (f"; G+ and G- forward: {1000 * summary['two_generator_passes_seconds']:.1f} ms."
                if summary["two_generator_passes_seconds"] else "."), "",
             markdown_table(summary)]
    for method, reason in summary["skipped"].items():
        lines += [f"Skipped {method}: {reason}.", ""]
    for name, cycle in summary["methods"].items():
        if "counterfactuals" not in cycle:
            continue
        transfer = cycle["counterfactuals"]["per_nodule"]
        p, ssim, blurred = transfer["probability"], transfer["ssim"], transfer["probability_through_blur"]
        flips = cycle["counterfactuals"]["per_patch_flip_rates"]["at the bundle's threshold"]
        to_malignant = flips["G+ to malignant, among those called benign"]
        to_benign = flips["G- to benign, among those called malignant"]
        lines += [f"Counterfactual validity of {name}: mean p(malignant) {p['x']['mean']:.3f} on x, "
                  f"{p['G+(x)']['mean']:.3f} on G+(x), {p['G-(x)']['mean']:.3f} on G-(x); G+ brings "
                  f"{_format(to_malignant['rate'], 2)} of the {to_malignant['eligible']} patches called benign to "
                  f"malignant, G- {_format(to_benign['rate'], 2)} of the {to_benign['eligible']} called malignant to "
                  f"benign; SSIM(x, G+(x)) {ssim['x, G+(x)']['mean']:.3f}, SSIM(x, G-(x)) {ssim['x, G-(x)']['mean']:.3f}; "
                  f"through a 1 px blur mean p(malignant) {blurred['x']['mean']:.3f} on x, {blurred['G+(x)']['mean']:.3f} "
                  f"on G+(x), {blurred['G-(x)']['mean']:.3f} on G-(x) (a counterfactual that works only unblurred "
                  f"is a pixel pattern against the classifier); "
                  f"{cycle['ratio_to_two_generator_passes']:.2f} x two generator passes.", ""]
    lines += prior_lines(summary) + reference_lines(summary)
    lines += ["Cost against the targets (method time / reference time):", ""]
    for method, target in summary["targets"].items():
        entry = summary["methods"].get(method)
        if entry:
            passes = summary["reference_passes"].get(method, 1)
            if "ratio_to_two_generator_passes" in entry:
                ratio, reference = entry["ratio_to_two_generator_passes"], "one forward pass of G+ and G-"
            else:
                ratio = entry["ratio_to_input_gradient"] / passes
                reference = f"{passes} input-gradient passes" if passes > 1 else "one input-gradient pass"
            lines.append(f"- {method}: {ratio:.2f} x {reference} (target at most {target:g}): "
                         f"{'met' if ratio <= target else 'not met'}")
    series = summary["whole_series"]
    lines.append(f"- a whole phantom series ({series['scan']}, {series['slices']} slices, {series['nodules']} "
                 f"nodules; read, explain with {series['method']}, write NRRD and JSON): "
                 f"{series['repeat_seconds']:.1f} s, the first call in the process {series['first_seconds']:.1f} s "
                 f"(target under {SERIES_TARGET_SECONDS:g} s): "
                 f"{'met' if series['repeat_seconds'] < SERIES_TARGET_SECONDS else 'not met'}")
    lines += ["", f"Machine: {summary['machine']}. Command: `{summary['command']}`. {summary['seconds']} s.", ""]
    return "\n".join(lines)


def knows_the_nodule(context_l1_factor) -> bool:
    """Whether generators trained with this context factor had a prior that knows where the nodule is (1, or
    none recorded: the same L1 weight everywhere)."""
    return context_l1_factor not in (None, 1, 1.0)


def prior_lines(summary: dict) -> list[str]:
    """A note for each cycle-am bundle trained with a prior that knows where the nodule is."""
    lines = []
    factor = summary.get("cycle_am_context_l1_factor")
    if knows_the_nodule(factor):
        lines += [f"The cycle-am bundle was trained with context_l1_factor {factor:g}: changes at the patch's centre "
                  f"cost less, a prior that tells the generators where the nodule is, so cycle-am's localization "
                  f"measures the prior as much as the method.", ""]
    for row, compared in summary.get("compared_cycle_am", {}).items():
        factor = compared["context_l1_factor"]
        prior = (f"with context_l1_factor {factor:g}, a prior that knows where the nodule is"
                 if knows_the_nodule(factor) else "with no prior that knows where the nodule is")
        lines += [f"{row}: the generators of {compared['path']}, for the same classifier, trained {prior}; measured "
                  f"on the same patches as cycle-am's row.", ""]
    return lines


def reference_lines(summary: dict) -> list[str]:
    """The classifier's scores on the references (``explainers.references``), as the report prints them."""
    check = summary.get("reference_check")
    if not check:
        return []
    parts = [f"{name} p {entry['probability']:.3f}" for name, entry in check["flat"].items()]
    lung = check.get("nodule_free_lung_patches")
    if lung:
        parts.append(f"{lung['patches']} nodule-free lung patches of the held-out scans: median p "
                     f"{lung['median_probability']:.3f}, {100 * lung['called_malignant']:.1f} % called malignant")
    lines = [f"References (threshold {check['threshold']:.3f}): " + "; ".join(parts) + "."]
    for method, choice in summary.get("method_references", {}).items():
        scores = ", ".join(f"{hu:g} HU p {p:.3f}" for hu, p in zip(choice["hu"], choice["probabilities"]))
        lines.append(f"- {method} uses {choice['description']} {scores}"
                     + ("" if choice["below_threshold"] else ": NOT below the threshold"))
    return lines + [""]


def write_outputs(written, summary: dict) -> None:
    """benchmark.md and the plots into an output set; ``summary`` becomes its manifest, benchmark.json."""
    from xaiexplain.io.figures import line_plot

    written.manifest_data = summary
    written.path("benchmark.md").write_text(markdown_report(summary))
    for kind in ("deletion", "insertion"):
        curves = {method: (entry["curve_fractions"], entry[f"{kind}_curve"])
                  for method, entry in summary["methods"].items() if f"{kind}_curve" in entry
                  and not registry.get(entry["method"]).is_iterative}
        if curves:
            line_plot(curves, written.path(f"{kind}_curves.png"), "share of pixels " + ("removed" if kind == "deletion"
                                                                                else "restored"),
                      "p(malignant)", f"RISE {kind}, most evidence first (patches called malignant)")
    _bar_plot(summary, written.path("localization.png"))


def _bar_plot(summary: dict, path: Path) -> None:
    from xaiexplain.io.figures import pyplot, save_figure

    plt = pyplot()
    methods = list(summary["methods"])
    measures = [("pointing game", lambda e: e["nodule"]["pointing_game"]),
                ("mass accuracy", lambda e: e["nodule"]["mass_accuracy"]),
                ("rank accuracy", lambda e: e["nodule"]["rank_accuracy"]),
                ("insertion AUC", lambda e: e.get("insertion_auc"))]
    figure, axis = plt.subplots(figsize=(max(7, 0.55 * len(methods)), 4))
    width = 0.8 / len(measures)
    for n, (name, value) in enumerate(measures):
        values = [value(summary["methods"][m]) or 0.0 for m in methods]
        axis.bar(np.arange(len(methods)) + n * width, values, width, label=name)
    axis.set_xticks(np.arange(len(methods)) + 0.4 - width / 2)
    axis.set_xticklabels([registry.get(m).file_name if summary["methods"][m]["method"] == m else m for m in methods],
                         rotation=60, ha="right", fontsize=7)
    axis.set_ylim(0, 1)
    axis.legend(fontsize=7, ncol=4)
    axis.set_title("Localization on the nodule and insertion AUC (held-out phantom nodules)", fontsize=9)
    figure.tight_layout()
    save_figure(figure, path, dpi=100)
