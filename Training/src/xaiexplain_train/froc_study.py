"""``xaiexplain-train froc-study``: paper 2's weakly-supervised lesion localization, on multi-lesion CT.

Render multi-lesion phantom images (``xaiexplain.multi_lesion``), train a classifier on their image-level
labels (positive while any malignant nodule remains), then, on the test images it calls positive (paper 2
evaluates referable predictions only), extract candidates from each method's initial map and from its
iteratively augmented map, and compare FROC curves and the sensitivity at 10 false positives per image.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from xaiexplain.data.patch_set import SPLITS, load_patch_set
from xaiexplain.data.sources.multi_lesion import render_multi_lesion_set
from xaiexplain.errors import XAIExplainError
from xaiexplain.evaluate import localization
from xaiexplain.explainers.on_patches import explain
from xaiexplain.io.files import output_set
from xaiexplain.models.bundles import load_bundle

# paper 2's methods; Grad-CAM at block 3 as in its Tables II-IV
METHODS = ("saliency", "guided-backprop", "integrated-gradients", "grad-cam", "guided-grad-cam")
CANDIDATES_PER_IMAGE = 40
# paper 2 suppresses and detects within a radius relative to the image side: 1.4 % (DR) and 1.9 % (AMD);
# the larger, 1.9 %, here: 2.4 px on 128 x 128
DETECTION_RADIUS_FRACTION = 0.019
FALSE_POSITIVES_PER_IMAGE = 10.0


def detection_radius_px(image_side: int) -> float:
    return DETECTION_RADIUS_FRACTION * image_side


def froc_of_maps(maps: np.ndarray, lesions: np.ndarray) -> localization.FrocCurve:
    radius = detection_radius_px(maps.shape[-1])
    candidates = [localization.local_maxima(np.maximum(m, 0.0), CANDIDATES_PER_IMAGE, radius) for m in maps]
    return localization.froc(candidates, list(lesions), radius)


def evaluate(classifier, data: Path, methods=METHODS, progress: bool = True) -> dict:
    bundle = load_bundle(classifier)
    arrays, rows, _ = load_patch_set(data)
    test = np.flatnonzero(arrays["split"] == SPLITS.index("test"))
    images = arrays["images"][test].astype(np.float32)
    probability = bundle.predict(images)
    positive = probability >= bundle.threshold
    if not positive.any():
        raise XAIExplainError(f"the classifier in {classifier} calls none of the {len(test)} test images positive, "
                              "so there is nothing to localize; train it longer or on more images")
    images, lesions = images[positive], arrays["lesion_labels"][test][positive]
    result = {"test_images": int(len(test)), "called_positive": int(positive.sum()),
              "truly_positive_among_them": int((arrays["label"][test][positive] == 1).sum()),
              "lesions": int(sum(len(np.setdiff1d(np.unique(l), [0])) for l in lesions)),
              "threshold": bundle.threshold, "detection_radius_px": detection_radius_px(images.shape[-1]),
              "candidates_per_image": CANDIDATES_PER_IMAGE, "methods": {}}
    iterator = methods
    if progress:
        from tqdm import tqdm

        iterator = tqdm(methods, desc="FROC", unit="method", file=sys.stderr)
    for method in iterator:
        augmented, details = explain(bundle, images, "iterative:" + method, return_details=True)
        # the first pass of the augmentation is the method's own map: no second computation
        initial = np.stack([passes[0].relevance for passes in details.passes])
        entry = {"iterations_mean": float(details.iterations.mean())}
        for name, maps in (("initial", initial), ("augmented", augmented)):
            curve = froc_of_maps(maps, lesions)
            entry[name] = {"sensitivity_at_10_fp": curve.sensitivity_at(FALSE_POSITIVES_PER_IMAGE),
                           "false_positives_per_image": curve.false_positives_per_image.tolist(),
                           "sensitivity": curve.sensitivity.tolist()}
        before, after = entry["initial"]["sensitivity_at_10_fp"], entry["augmented"]["sensitivity_at_10_fp"]
        entry["relative_change"] = (after - before) / before if before > 0 else None
        result["methods"][method] = entry
    changes = [e["relative_change"] for e in result["methods"].values() if e["relative_change"] is not None]
    result["relative_change_mean"] = float(np.mean(changes)) if changes else None
    result["relative_change_sem"] = float(np.std(changes, ddof=1) / np.sqrt(len(changes))) if len(changes) > 1 else None
    return result


def markdown(result: dict) -> str:
    lines = ["| method | SE/10 FPs initial | SE/10 FPs augmented | relative change | mean iterations |",
             "|---|---|---|---|---|"]
    for method, entry in result["methods"].items():
        change = entry["relative_change"]
        lines.append(f"| {method} | {entry['initial']['sensitivity_at_10_fp']:.3f} | "
                     f"{entry['augmented']['sensitivity_at_10_fp']:.3f} | "
                     f"{'n/a' if change is None else f'{100 * change:+.1f} %'} | {entry['iterations_mean']:.1f} |")
    mean, sem = result["relative_change_mean"], result["relative_change_sem"]
    summary = (f"Mean relative change {100 * mean:+.1f} % +/- {100 * sem:.1f} % (standard error over methods); "
               "paper 2 on fundus images: +11.2 +/- 2.0 %." if mean is not None and sem is not None else "")
    return "\n".join(lines) + "\n\n" + (
        f"{result['called_positive']} of {result['test_images']} test images called positive "
        f"({result['truly_positive_among_them']} truly positive), {result['lesions']} malignant nodules in them; "
        f"candidates: up to {result['candidates_per_image']} local maxima per map, detection radius "
        f"{result['detection_radius_px']:g} px. {summary}\n")


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


def run_froc_study(out: Path, images: int, epochs: int, widths, seed: int, device: str, command: str,
                   methods=METHODS, progress: bool = True) -> dict:
    from .classifier import ClassifierSettings, train_classifier

    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise XAIExplainError(f"the FROC study knows the methods {', '.join(METHODS)}, not {', '.join(unknown)}")
    started = time.time()
    data, classifier = out / "data", out / "classifier"
    if not (data / "dataset.json").is_file():
        render_multi_lesion_set(data, images=images, seed=seed, progress=progress, command=command)
    if not (classifier / "config.json").is_file():
        train_classifier(ClassifierSettings(data=data, out=classifier, epochs=epochs, batch_size=32, widths=widths,
                                            seed=seed, device=device, bootstrap_samples=200, command=command),
                         progress=progress)
    result = evaluate(classifier, data, methods, progress=progress)
    result.update({"command": command, "seed": seed, "seconds": round(time.time() - started, 1),
                   "classifier_metrics": load_bundle(classifier).config.get("metrics", {})})
    with output_set(out, "froc.json") as written:
        written.path("froc.md").write_text(markdown(result))
        plot(result, written.path("froc.png"))
        written.manifest_data = result
    return result


PAPER_2_RELATIVE_CHANGE = "+11.2 +/- 2.0 %"


def summarize(study_folders, out: Path, command: str = "") -> dict:
    """Combine FROC studies run with different seeds (renderings, splits, classifiers): per method the mean
    and sample standard deviation over seeds of the relative change in sensitivity at 10 false positives
    per image, written as one output set (``froc-summary.json`` and ``.md``)."""
    import json

    runs = []
    for folder in study_folders:
        manifest = Path(folder) / "froc.json"
        if not manifest.is_file():
            raise XAIExplainError(f"{folder} holds no froc.json: run xaiexplain-train froc-study --out {folder} first")
        runs.append(json.loads(manifest.read_text()))
    methods = [m for m in runs[0]["methods"] if all(m in run["methods"] for run in runs)]
    table = {}
    for method in methods:
        entries = [run["methods"][method] for run in runs]
        changes = np.array([e["relative_change"] for e in entries if e["relative_change"] is not None], float)
        table[method] = {
            "initial": [e["initial"]["sensitivity_at_10_fp"] for e in entries],
            "augmented": [e["augmented"]["sensitivity_at_10_fp"] for e in entries],
            "relative_change": changes.tolist(),
            "relative_change_mean": float(changes.mean()) if changes.size else None,
            "relative_change_sd": float(changes.std(ddof=1)) if changes.size > 1 else None,
            "iterations_mean": float(np.mean([e["iterations_mean"] for e in entries])),
        }
    summary = {"command": command, "studies": [str(f) for f in study_folders],
               "seeds": [run.get("seed") for run in runs], "detection_radius_px": runs[0]["detection_radius_px"],
               "methods": table, "paper_2": PAPER_2_RELATIVE_CHANGE}
    with output_set(out, "froc-summary.json") as written:
        written.path("froc-summary.md").write_text(summary_markdown(summary, runs))
        written.manifest_data = summary
    return summary


def summary_markdown(summary: dict, runs: list[dict]) -> str:
    lines = ["| method | SE/10 FPs initial (per seed) | augmented (per seed) | relative change, mean +/- sd | "
             "mean iterations |", "|---|---|---|---|---|"]
    for method, entry in summary["methods"].items():
        mean, sd = entry["relative_change_mean"], entry["relative_change_sd"]
        change = "n/a" if mean is None else f"{100 * mean:+.1f} %" + ("" if sd is None else f" +/- {100 * sd:.1f} %")
        lines.append(f"| {method} | {' / '.join(f'{v:.3f}' for v in entry['initial'])} | "
                     f"{' / '.join(f'{v:.3f}' for v in entry['augmented'])} | {change} | "
                     f"{entry['iterations_mean']:.1f} |")
    positives = ", ".join(f"{run['called_positive']} of {run['test_images']}" for run in runs)
    return "\n".join(lines) + (f"\n\n{len(runs)} seeds; test images called positive: {positives}; detection radius "
                               f"{summary['detection_radius_px']:.1f} px (1.9 % of the image side, as paper 2 for "
                               f"AMD). Paper 2 on fundus images: {summary['paper_2']}.\n")

