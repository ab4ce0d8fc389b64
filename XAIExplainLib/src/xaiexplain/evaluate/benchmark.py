"""``xaiexplain benchmark``: every method measured side by side on held-out phantom nodules.

The nodules are those of the test-split patients of the patch set (never seen in training), one patch
per nodule: the slice with the largest consensus area. For every method and its ``iterative:`` variant,
and ``cycle-am``:

- localization (``xaiexplain.evaluate.localization``) of the evidence for a malignant decision against the
  nodule mask on the patches called malignant, and of the evidence for the decision made against the
  spicule and calcification masks on all patches that have them (calcification speaks for benign, and
  most calcified nodules are called benign);
- faithfulness: RISE deletion and insertion AUC of p(malignant) on the patches called malignant, pixels
  replaced by the patch's lung parenchyma;
- sanity: the model-parameter randomization test, Spearman correlation of |map| between the trained
  classifier and one with all parameters re-initialized (low is good); not applicable to cycle-am, whose
  generators belong to the trained classifier;
- counterfactual validity for cycle-am (flip rates, probabilities, SSIM);
- cost: wall time per patch, its ratio to one input-gradient pass of the classifier on the same batch (a
  forward pass and the gradient with respect to the input only),
  and the peak resident memory the method added.
It writes ``benchmark.json``, ``benchmark.md`` (one table, methods as rows) and plots.
"""
from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from xaiexplain import __version__
from xaiexplain.data.patch_set import held_out_patients, labelled_scans, load_lung_patches, load_patch_set
from xaiexplain.data.sources.phantom_patches import render_patch_set
from xaiexplain.evaluate import faithfulness, localization
from xaiexplain.evaluate.cost import (
    FAST_METHOD_REPEATS,
    REPEAT_BELOW_SECONDS,
    generator_forward_seconds,
    input_gradient_seconds,
    timed,
    whole_series_seconds,
)
from xaiexplain.explainers import references, registry
from xaiexplain.errors import XAIExplainError
from xaiexplain.explainers.counterfactuals import Counterfactuals, generators_for
from xaiexplain.explainers.iterative import IterativeResult
from xaiexplain.explainers.on_patches import explain
from xaiexplain.io.files import output_set
from xaiexplain.models.architectures import build
from xaiexplain.models.bundles import Bundle, load_bundle

QUICK_NODULES = 8
FULL_NODULES = 60
QUICK_RANDOMIZATION_PATCHES = 4
FULL_RANDOMIZATION_PATCHES = 16
POINTING_TOLERANCE_PX = 2
SERIES_TARGET_SECONDS = 5.0


def all_methods() -> list[str]:
    """The benchmark's rows: every method of the registry, each beside its ``iterative:`` variant."""
    return [name for base in registry.base_methods() for name in (base, registry.ITERATIVE_PREFIX + base)]


def cost_targets() -> tuple[dict, dict]:
    """The registry's cost targets on a CPU (method time / reference time, the reference being that many
    input-gradient passes of the classifier; for a method of the generators, one pass of G+ and G-)."""
    records = [registry.get(name) for name in registry.base_methods()]
    return ({r.name: r.cost_target for r in records if r.cost_target is not None},
            {r.name: r.reference_passes for r in records if r.reference_passes != 1})


def held_out_patches(nodules: int, seed: int = 0, progress: bool = False) -> dict:
    """One patch per held-out nodule (its largest consensus slice), with masks and the LIDC labels."""
    patients, chosen = [], 0
    by_scan = labelled_scans(held_out_patients(seed))
    for (patient, _), scan_nodules in sorted(by_scan.items()):
        if chosen >= nodules:
            break
        patients.append(patient)
        chosen += sum(n.label is not None for n in scan_nodules)
    with tempfile.TemporaryDirectory() as folder:
        render_patch_set(Path(folder) / "patches", seed=seed, patient_ids=patients, progress=progress)
        arrays, rows, _ = load_patch_set(Path(folder) / "patches")
        lung = load_lung_patches(Path(folder) / "patches")
    picked = []
    for row in rows[:nodules]:
        span = np.arange(row["first_patch"], row["first_patch"] + row["patch_count"])
        picked.append(span[np.argmax(arrays["nodule_mask"][span].sum(axis=(1, 2)))])
    picked = np.array(picked)
    return {"images": arrays["images"][picked].astype(np.float32),
            "nodule_mask": arrays["nodule_mask"][picked], "spicule_mask": arrays["spicule_mask"][picked],
            "calcification_mask": arrays["calcification_mask"][picked], "label": arrays["label"][picked],
            "names": [f"{r['patient_id']} nodule {r['nodule_index']}" for r in rows[:nodules]],
            "lung_images": lung["images"].astype(np.float32)}


def randomized(bundle: Bundle, seed: int) -> Bundle:
    """The classifier with every parameter re-initialized (same architecture and input spec)."""
    torch.manual_seed(seed)
    model = build(bundle.config["architecture"], bundle.config.get("arguments", {})).eval()
    return Bundle(path=bundle.path, config=bundle.config, model=model)


# -- one method --------------------------------------------------------------------------------------------

def _mean(values) -> float | None:
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else None


def measure_method(method: str, bundle: Bundle, data: dict, decisions: np.ndarray,
                   random_bundle: Bundle, randomization_patches: int, reference_seconds: float,
                   options: dict | None = None) -> dict:
    images = data["images"]
    options = options or {}
    explain(bundle, images[:1], method, **options)  # warm-up: imports and first-call set-up are not its cost
    (maps, details), seconds, memory = timed(lambda: explain(bundle, images, method, return_details=True, **options),
                                              FAST_METHOD_REPEATS, REPEAT_BELOW_SECONDS)
    # every measure on the same patches for every method: those called malignant (iterative methods augment
    # the evidence for the positive decision only), on the map reduced to that evidence as Algorithm 1 sees it
    called_malignant = np.flatnonzero(decisions)
    record = registry.get(method)
    evidence = record.map_kind.positive_evidence(maps)
    for_decision = np.stack([record.map_kind.for_decision(m, bool(d)) for m, d in zip(maps, decisions)])
    entry = {"seconds_per_patch": seconds / len(images), "ratio_to_input_gradient": seconds / reference_seconds,
             "peak_memory_mb": memory, "measured_patches": called_malignant.tolist()}
    explained = [n for n in called_malignant if (evidence[n] > 0).any()]
    entry["patches_with_evidence"] = len(explained)
    if isinstance(details, IterativeResult):
        passes = [p for n in called_malignant for p in details.passes[n]]
        entry["iterations_mean"] = float(details.iterations[called_malignant].mean()) if called_malignant.size else None
        entry["mask_fraction_median"] = float(np.median([p.mask.mean() for p in passes])) if passes else None
        # Algorithm 1 stops when the prediction falls below the threshold or at T: how often its premise held
        entry["ended_below_threshold"] = int((details.final_probability[called_malignant] < bundle.threshold).sum())
    for mask_name, maps_measured, patches in (("nodule_mask", evidence, explained),
                                              ("spicule_mask", for_decision, range(len(images))),
                                              ("calcification_mask", for_decision, range(len(images)))):
        masks = data[mask_name]
        with_mask = [n for n in patches if masks[n].any() and (maps_measured[n] > 0).any()]
        entry[mask_name.removesuffix("_mask")] = localization_entry(maps_measured, masks, with_mask)
    if called_malignant.size:
        curves = faithfulness.deletion_insertion(images[called_malignant], evidence[called_malignant], bundle.predict)
        entry.update({"faithfulness_patches": int(called_malignant.size),
                      "deletion_auc": float(curves.deletion_auc.mean()),
                      "insertion_auc": float(curves.insertion_auc.mean()),
                      "deletion_curve": curves.deletion.mean(axis=0).tolist(),
                      "insertion_curve": curves.insertion.mean(axis=0).tolist(),
                      "curve_fractions": curves.fractions.tolist()})
    if record.randomization_not_applicable:
        entry["randomization_not_applicable"] = record.randomization_not_applicable
    else:
        subset = images[:randomization_patches]
        random_maps = explain(random_bundle, subset, method, **options)
        entry["randomization_spearman"] = _mean([faithfulness.rank_correlation(maps[n], random_maps[n])
                                                 for n in range(len(subset))])
        # e.g. an iterative method with a randomized classifier that calls nothing malignant: no map to compare
        entry["randomized_maps_empty"] = int(sum(not random_map.any() for random_map in random_maps))
    if isinstance(details, Counterfactuals):
        entry["counterfactuals"] = _counterfactual_validity(bundle, images, details)
    return entry


def localization_entry(maps: np.ndarray, masks: np.ndarray, measured) -> dict:
    """Pointing game, relevance mass and rank accuracy of non-negative ``maps`` against ``masks``, averaged
    over the ``measured`` patches."""
    return {"patches": len(measured),
            "pointing_game": _mean([localization.pointing_game(maps[n], masks[n], POINTING_TOLERANCE_PX)
                                    for n in measured]),
            "mass_accuracy": _mean([localization.relevance_mass_accuracy(maps[n], masks[n]) for n in measured]),
            "rank_accuracy": _mean([localization.relevance_rank_accuracy(maps[n], masks[n]) for n in measured])}


def _counterfactual_validity(bundle: Bundle, images: np.ndarray, pair) -> dict:
    """Domain transfer on the benchmark's patches: one per nodule."""
    from xaiexplain.evaluate.domain_transfer import counterfactual_transfer

    return counterfactual_transfer(bundle, images, pair, np.arange(len(images)))


# -- the whole benchmark -----------------------------------------------------------------------------------

def machine() -> str:
    return (f"{platform.machine()} {platform.processor() or ''}".strip() + f", {os.cpu_count()} cores, "
            f"torch {torch.__version__} with {torch.get_num_threads()} threads, Python {platform.python_version()}")


def run_benchmark(out, quick: bool = False, methods=None, model=None, cycle_am=None, nodules: int | None = None,
                  seed: int = 0, progress: bool = True, command: str = "", data: dict | None = None) -> dict:
    """``data``: the ``held_out_patches`` to use when the caller has them already."""
    started = time.time()
    bundle = load_bundle(model) if model else load_bundle()
    with output_set(out, "benchmark.json") as written:  # checks that out is writable before measuring
        methods = list(methods or all_methods())
        count = nodules or (QUICK_NODULES if quick else FULL_NODULES)
        data = data or held_out_patches(count, seed, progress=progress)
        images = data["images"]
        probabilities = bundle.predict(images)
        decisions = probabilities >= bundle.threshold

        series = whole_series_seconds(bundle)
        reference = input_gradient_seconds(bundle, images)
        generators, generator_reference, skipped = None, None, {}
        needing_generators = [m for m in methods if "generators" in registry.get(m).defaults]
        if needing_generators:
            try:  # cycle-am's generators belong to one classifier: skipped, with the reason, for another
                generators = generators_for(bundle, cycle_am)
                generator_reference = generator_forward_seconds(generators, bundle, images)
            except XAIExplainError as refusal:
                skipped = {m: str(refusal) for m in needing_generators}
                methods = [m for m in methods if m not in skipped]
        random_bundle = randomized(bundle, seed)
        targets, reference_passes = cost_targets()
        randomization_patches = QUICK_RANDOMIZATION_PATCHES if quick else FULL_RANDOMIZATION_PATCHES
        results = {}
        iterator = methods
        if progress:
            from tqdm import tqdm

            iterator = tqdm(methods, desc="benchmark", unit="method", file=sys.stderr)
        for method in iterator:
            takes_generators = "generators" in registry.get(method).defaults
            results[method] = measure_method(method, bundle, data, decisions, random_bundle, randomization_patches,
                                             reference, {"generators": generators} if takes_generators else {})
            if "counterfactuals" in results[method]:
                seconds = results[method]["seconds_per_patch"] * len(images)
                results[method]["ratio_to_two_generator_passes"] = seconds / generator_reference
        summary = {
            "command": command, "library_version": __version__, "machine": machine(), "quick": quick, "seed": seed,
            "model": str(bundle.path), "cycle_am": str(generators.path) if generators else None,
            "cycle_am_context_l1_factor": generators.config["provenance"].get("context_l1_factor") if generators else None,
            "reference_check": references.reference_check(bundle.predict, bundle.threshold, data.get("lung_images"),
                                                          bundle.patch_size),
            "method_references": {m: c.to_json() for m in methods
                                  if (c := references.reference_choice(bundle, m)) is not None},
            "skipped": skipped, "patches": int(len(images)),
            "patch_names": data["names"], "labels": {"malignant": int(data["label"].sum()),
                                                     "benign": int((1 - data["label"]).sum())},
            "decided_malignant": int(decisions.sum()), "threshold": bundle.threshold,
            "patches_with_calcification": int(data["calcification_mask"].any(axis=(1, 2)).sum()),
            "pointing_tolerance_px": POINTING_TOLERANCE_PX, "randomization_patches": randomization_patches,
            "input_gradient_seconds": reference, "two_generator_passes_seconds": generator_reference,
            "targets": targets, "reference_passes": reference_passes, "whole_series": series,
            "methods": results, "seconds": round(time.time() - started, 1),
        }
        write_outputs(written, summary)
    return summary


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


def prior_lines(summary: dict) -> list[str]:
    """A note when the cycle-am bundle was trained with a prior that knows where the nodule is."""
    factor = summary.get("cycle_am_context_l1_factor")
    if factor in (None, 1, 1.0):
        return []
    return [f"The cycle-am bundle was trained with context_l1_factor {factor:g}: changes at the patch's centre cost "
            f"less, a prior that tells the generators where the nodule is, so cycle-am's localization measures the "
            f"prior as much as the method.", ""]


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
                  and not registry.get(method).is_iterative}
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
    axis.set_xticklabels([registry.get(m).file_name for m in methods], rotation=60, ha="right", fontsize=7)
    axis.set_ylim(0, 1)
    axis.legend(fontsize=7, ncol=4)
    axis.set_title("Localization on the nodule and insertion AUC (held-out phantom nodules)", fontsize=9)
    figure.tight_layout()
    save_figure(figure, path, dpi=100)
