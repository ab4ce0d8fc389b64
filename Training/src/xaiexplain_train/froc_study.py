"""``xaiexplain-train froc-study``: paper 2's weakly-supervised lesion localization, on multi-lesion CT.

Render multi-lesion phantom images (``xaiexplain.multi_lesion``), train a classifier on their image-level
labels (positive while any malignant nodule remains), then, on the test images it calls positive (paper 2
evaluates referable predictions only), extract candidates from each method's initial map and from its
iteratively augmented map, and compare FROC curves and the sensitivity at 10 false positives per image,
with a bootstrap interval over the images (``froc_bootstrap``).

Algorithm 1 explains an image again and again until the classifier calls it negative, so it assumes that
the classifier depends on the lesions: once they are gone, the image is negative. The study checks that
premise on the truly positive test images it evaluates (each rendered again without its malignant nodules)
and, by default, trains on paired negatives (each positive training image without its malignant nodules,
labelled negative), so that the classifier has to look at the lesions: our choice, not the paper's.
"""
from __future__ import annotations

import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from xaiexplain.data.patch_set import SPLITS, load_patch_set
from xaiexplain.data.sources.multi_lesion import render_multi_lesion_set
from xaiexplain.errors import XAIExplainError
from xaiexplain.evaluate import localization
from xaiexplain.explainers.on_patches import explain
from xaiexplain.io.files import output_set
from xaiexplain.models.bundles import load_bundle

from . import froc_bootstrap

# paper 2's methods; Grad-CAM at block 3 as in its Tables II-IV
METHODS = ("saliency", "guided-backprop", "integrated-gradients", "grad-cam", "guided-grad-cam")
# paper 2 suppresses and detects within a radius relative to the image side: 1.4 % (DR) and 1.9 % (AMD);
# the larger, 1.9 %, here: 2.4 px on 128 x 128
DETECTION_RADIUS_FRACTION = 0.019
FALSE_POSITIVES_PER_IMAGE = 10.0
CANDIDATE_RULE = ("every local maximum above zero after suppression: the highest remaining pixel of the map, then "
                  "everything within the detection radius of it masked out, until no pixel above zero remains "
                  "(paper 2's extraction; it states no cap)")
NORMALISATION = {
    "between_passes": "none: each pass's map M_t (the method's map reduced to evidence for the positive decision) "
                      "enters sum_t exp(-0.6 t) M_t as the method returns it, as Algorithm 1 writes it; paper 2 "
                      "states no normalisation",
    "across_images": "none: the candidates of all images are ranked together by their map values as they are "
                     "(paper 2 states none)"}
PREMISE_TARGET = 0.9
PAPER_2_RELATIVE_CHANGE = "+11.2 +/- 2.0 %"
PAPER_2_SPREAD = ("paper 2's +/- spans 15 configurations (3 classifiers x 5 methods, its Table V) and it does not "
                  "say whether it is a standard deviation or a standard error")


def detection_radius_px(image_side: int) -> float:
    return DETECTION_RADIUS_FRACTION * image_side


def froc_events(maps: np.ndarray, lesions: np.ndarray, cap: int | None = None) -> localization.FrocEvents:
    """The candidates of each map (``CANDIDATE_RULE``; with a ``cap``, at most that many per map) against
    its image's lesions."""
    radius = detection_radius_px(maps.shape[-1])
    return localization.FrocEvents([
        localization.image_outcomes(localization.local_maxima(np.maximum(m, 0.0), cap, radius), labels, radius)
        for m, labels in zip(maps, lesions)])


def froc_of_maps(maps: np.ndarray, lesions: np.ndarray, cap: int | None = None) -> localization.FrocCurve:
    return froc_events(maps, lesions, cap).curve()


def curve_points(curve: localization.FrocCurve) -> dict:
    """The curve's corners (a point on each side of every rise in sensitivity, and its ends): the same step
    curve in a few points where it has one per candidate."""
    rises = np.flatnonzero(np.diff(curve.sensitivity) > 0)
    keep = np.unique(np.concatenate([[0, len(curve.sensitivity) - 1], rises, rises + 1]))
    return {"false_positives_per_image": curve.false_positives_per_image[keep].tolist(),
            "sensitivity": curve.sensitivity[keep].tolist()}


def premise_check(bundle, removed_hu: np.ndarray, removal: str) -> dict:
    """Algorithm 1's premise on images the classifier calls positive that are truly positive, given here
    with their malignant nodules removed: how many it then calls negative."""
    after = np.asarray(bundle.predict(removed_hu), float) if len(removed_hu) else np.zeros(0)
    negative = int((after < bundle.threshold).sum())
    share = negative / len(after) if len(after) else None
    return {"removal": removal, "images": int(len(after)), "called_negative": negative, "share": share,
            "target": PREMISE_TARGET, "holds": share is not None and share >= PREMISE_TARGET,
            "probability_after_removal_median": float(np.median(after)) if len(after) else None}


def rendered_images(data_summary: dict) -> int:
    """The multi-lesion images a study's data set was rendered with (its paired negatives not counted)."""
    return int(data_summary["images"]) - int(data_summary.get("paired_negatives", 0))


def evaluate(classifier, data: Path, methods=METHODS, progress: bool = True, cap: int | None = None,
             bootstrap_samples: int = froc_bootstrap.BOOTSTRAP_SAMPLES, seed: int = 0) -> dict:
    bundle = load_bundle(classifier)
    arrays, rows, summary = load_patch_set(data)
    if "lesions_removed" not in arrays:
        raise XAIExplainError(f"the multi-lesion set in {data} has no images with their lesions removed (it was "
                              "rendered by an earlier version): render it again")
    test = np.flatnonzero(arrays["split"] == SPLITS.index("test"))
    images = arrays["images"][test].astype(np.float32)
    probability = bundle.predict(images)
    positive = probability >= bundle.threshold
    if not positive.any():
        raise XAIExplainError(f"the classifier in {classifier} calls none of the {len(test)} test images positive, "
                              "so there is nothing to localize; train it longer or on more images")
    truly_positive = positive & (arrays["label"][test] == 1)
    premise = premise_check(bundle, arrays["lesions_removed"][test][truly_positive].astype(np.float32),
                            summary["lesions_removed"])
    images, lesions = images[positive], arrays["lesion_labels"][test][positive]
    weights = froc_bootstrap.resample_weights(len(images), bootstrap_samples, seed)
    result = {"images": rendered_images(summary), "test_images": int(len(test)),
              "called_positive": int(positive.sum()),
              "truly_positive_among_them": int(truly_positive.sum()),
              "lesions": int(sum(len(np.setdiff1d(np.unique(l), [0])) for l in lesions)),
              "threshold": bundle.threshold, "detection_radius_px": detection_radius_px(images.shape[-1]),
              "candidates_per_image": cap, "candidate_rule": CANDIDATE_RULE if cap is None else
              f"{CANDIDATE_RULE[:CANDIDATE_RULE.index(' (paper')]}, at most {cap} per map",
              "normalisation": NORMALISATION, "premise": premise,
              "paired_negatives": int(summary.get("paired_negatives", 0)),
              "bootstrap": {"samples": bootstrap_samples, "interval": froc_bootstrap.INTERVAL, "seed": seed,
                            "unit": "the test images called positive, drawn with replacement; every method on "
                                    "the same resamples"},
              "methods": {}}
    iterator = methods
    if progress:
        from tqdm import tqdm

        iterator = tqdm(methods, desc="FROC", unit="method", file=sys.stderr)
    replicates = []
    for method in iterator:
        augmented, details = explain(bundle, images, "iterative:" + method, return_details=True)
        # the first pass of the augmentation is the method's own map: no second computation
        initial = np.stack([passes[0].relevance for passes in details.passes])
        entry = {"iterations_mean": float(details.iterations.mean())}
        events = {}
        for name, maps in (("initial", initial), ("augmented", augmented)):
            events[name] = froc_events(maps, lesions, cap)
            curve = events[name].curve()
            entry[name] = {"sensitivity_at_10_fp": curve.sensitivity_at(FALSE_POSITIVES_PER_IMAGE),
                           **curve_points(curve)}
        change = froc_bootstrap.relative_change(entry["initial"]["sensitivity_at_10_fp"],
                                                entry["augmented"]["sensitivity_at_10_fp"])
        entry["relative_change"] = None if np.isnan(change) else change
        replicates.append(froc_bootstrap.change_replicates(events["initial"], events["augmented"], weights,
                                                           FALSE_POSITIVES_PER_IMAGE))
        entry["relative_change_bootstrap"] = froc_bootstrap.summary(replicates[-1])
        result["methods"][method] = entry
    changes = [e["relative_change"] for e in result["methods"].values() if e["relative_change"] is not None]
    result["relative_change_mean"] = float(np.mean(changes)) if changes else None
    result["relative_change_mean_bootstrap"] = froc_bootstrap.summary(froc_bootstrap.mean_replicates(replicates))
    return result


def percent(value, sign: bool = True) -> str:
    return "n/a" if value is None else f"{100 * value:{'+' if sign else ''}.1f} %"


def interval_text(bootstrap: dict) -> str:
    bounds = bootstrap.get("interval_95")
    return "" if bounds is None else f" [{percent(bounds[0])}, {percent(bounds[1])}]"


def premise_text(premise: dict) -> str:
    verdict = "holds" if premise["holds"] else "NOT MET: on the others the loop goes on once the lesions are gone"
    return (f"Premise of Algorithm 1: {premise['called_negative']} of {premise['images']} truly positive test "
            f"images called positive are called negative once their malignant nodules are removed "
            f"({percent(premise['share'], sign=False)}; target >= {100 * premise['target']:.0f} %, {verdict}); "
            f"removal: {premise['removal']}.")


def markdown(result: dict) -> str:
    lines = ["| method | SE/10 FPs initial | SE/10 FPs augmented | relative change [95 % interval] | mean iterations |",
             "|---|---|---|---|---|"]
    for method, entry in result["methods"].items():
        lines.append(f"| {method} | {entry['initial']['sensitivity_at_10_fp']:.3f} | "
                     f"{entry['augmented']['sensitivity_at_10_fp']:.3f} | {percent(entry['relative_change'])}"
                     f"{interval_text(entry['relative_change_bootstrap'])} | {entry['iterations_mean']:.1f} |")
    mean = result["relative_change_mean"]
    summary = "" if mean is None else (
        f"Mean relative change over the methods {percent(mean)}{interval_text(result['relative_change_mean_bootstrap'])}"
        f" ({result['bootstrap']['interval']} over the images, {result['bootstrap']['samples']} resamples); paper 2 "
        f"on fundus images: {PAPER_2_RELATIVE_CHANGE}.")
    return "\n".join(lines) + "\n\n" + (
        f"{result['called_positive']} of {result['test_images']} test images called positive "
        f"({result['truly_positive_among_them']} truly positive), {result['lesions']} malignant nodules in them; "
        f"classifier trained with {result['paired_negatives']} paired negatives. {premise_text(result['premise'])} "
        f"Candidates: {result['candidate_rule']}; detection radius {result['detection_radius_px']:g} px. "
        f"Normalisation between passes: {result['normalisation']['between_passes']}; across images: "
        f"{result['normalisation']['across_images']}. {summary}\n")


def plot(result: dict, path: Path) -> None:
    from xaiexplain.io.figures import pyplot, save_figure

    plt = pyplot()
    figure, axes = plt.subplots(1, len(result["methods"]), figsize=(3.2 * len(result["methods"]), 3.2), squeeze=False)
    for axis, (method, entry) in zip(axes[0], result["methods"].items()):
        for name, style in (("initial", "--"), ("augmented", "-")):
            axis.plot(entry[name]["false_positives_per_image"], entry[name]["sensitivity"], style, label=name)
        axis.axvline(FALSE_POSITIVES_PER_IMAGE, color="grey", linewidth=0.6)
        axis.set_xlim(0, 20)
        axis.set_ylim(0, 1)
        axis.set_title(method, fontsize=9)
        axis.set_xlabel("false positives per image", fontsize=8)
        axis.grid(alpha=0.3)
    axes[0, 0].set_ylabel("sensitivity (malignant nodules)", fontsize=8)
    axes[0, 0].legend(fontsize=8)
    figure.tight_layout()
    save_figure(figure, path, dpi=100)


def check_data(data: Path, paired_negatives: bool) -> None:
    """A multi-lesion set the study can reuse: with its lesions removed, paired as asked."""
    _, _, summary = load_patch_set(data, ("label",))
    if "lesions_removed" not in summary:
        raise XAIExplainError(f"{data} was rendered by an earlier version, without its images' lesions removed: "
                              f"remove {data} and the classifier beside it to render and train again")
    if bool(summary.get("paired_negatives")) != paired_negatives:
        raise XAIExplainError(f"{data} was rendered {'without' if paired_negatives else 'with'} paired negatives: "
                              f"remove {data} and the classifier beside it, or run the study "
                              f"{'without' if paired_negatives else 'with'} --no-paired-negatives")


def run_froc_study(out: Path, images: int, epochs: int, widths, seed: int, device: str, command: str,
                   methods=METHODS, progress: bool = True, paired_negatives: bool = True, cap: int | None = None,
                   bootstrap_samples: int = froc_bootstrap.BOOTSTRAP_SAMPLES) -> dict:
    from .classifier import ClassifierSettings, train_classifier

    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise XAIExplainError(f"the FROC study knows the methods {', '.join(METHODS)}, not {', '.join(unknown)}")
    started = time.time()
    data, classifier = out / "data", out / "classifier"
    if not (data / "dataset.json").is_file():
        render_multi_lesion_set(data, images=images, seed=seed, progress=progress, command=command,
                                paired_negatives=paired_negatives)
    check_data(data, paired_negatives)
    if not (classifier / "config.json").is_file():
        train_classifier(ClassifierSettings(data=data, out=classifier, epochs=epochs, batch_size=32, widths=widths,
                                            seed=seed, device=device, bootstrap_samples=200, command=command),
                         progress=progress)
    result = evaluate(classifier, data, methods, progress=progress, cap=cap, bootstrap_samples=bootstrap_samples,
                      seed=seed)
    result.update({"command": command, "seed": seed, "seconds": round(time.time() - started, 1),
                   "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
                   "classifier_metrics": load_bundle(classifier).config.get("metrics", {})})
    with output_set(out, "froc.json") as written:
        written.path("froc.md").write_text(markdown(result))
        plot(result, written.path("froc.png"))
        written.manifest_data = result
    return result
