"""Explaining a classifier's decisions: on patches (``explain``) and on a whole series
(``explain_series``), with the method names of DESIGN.md, the same in Python, CLI and Slicer.

Methods: the attribution methods of ``xaiexplain.attribution``, ``cycle-am`` (cycle-consistent
activation maximization, R = G+(x) - G-(x) in HU, ``xaiexplain.cycle_am``), and ``iterative:<method>`` for
any of them (iterative augmentation of visual evidence, ``xaiexplain.iterative``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
import torch
from skimage.filters import threshold_otsu

from . import attribution, iterative
from .bundles import Bundle, load_bundle
from .errors import XAIExplainError
from .patch_stacks import NoduleSite, lidc_sites, point_sites
from .patches import DEFAULT_HALF_HEIGHT_MM, PatchStack, backproject, extract_stack
from .series import CTSeries

ITERATIVE_PREFIX = "iterative:"
CYCLE_AM = "cycle-am"
DEFAULT_CYCLE_AM = "demo-cycle-am"
EVIDENCE_LABELS = {"malignant evidence": 1, "benign evidence": 2}


def base_methods() -> list[str]:
    return list(attribution.METHODS) + [CYCLE_AM]


def available_methods() -> list[str]:
    return base_methods() + [ITERATIVE_PREFIX + m for m in base_methods()]


def check_method(method: str) -> None:
    if method not in available_methods():
        raise XAIExplainError(f"unknown method {method!r}; choose one of {', '.join(available_methods())}")


def method_file_name(method: str) -> str:
    """A file-name-safe form of a method name (``iterative:lrp`` -> ``iterative_lrp``)."""
    return method.replace(":", "_")


def _context(bundle: Bundle, options: dict) -> attribution.AttributionContext:
    low, high = bundle.input_spec["hu_window"]
    return attribution.AttributionContext(bundle.model, lambda hu: float(np.clip((hu - low) / (high - low), 0, 1)),
                                          options)


@dataclass
class Counterfactuals:
    """G+(x) and G-(x) of cycle-consistent activation maximization, in HU, with the classifier's
    malignancy probabilities."""

    malignant: np.ndarray  # G+(x), (N, H, W) HU
    benign: np.ndarray  # G-(x)
    malignant_probability: np.ndarray  # p(G+(x)), (N,)
    benign_probability: np.ndarray  # p(G-(x))


def counterfactuals(bundle: Bundle, patches_hu: np.ndarray, generators=None) -> Counterfactuals:
    """G+(x) and G-(x) for HU patches; ``generators`` a cycle-am bundle (default the shipped one)."""
    generators = load_bundle(generators or DEFAULT_CYCLE_AM, role="cycle-am")
    if generators.config.get("kind") != "cycle-am":
        raise XAIExplainError(f"{generators.path} is not a cycle-am bundle (its kind is "
                              f"{generators.config.get('kind')!r})")
    x = bundle.to_tensor(patches_hu)
    with torch.no_grad():
        plus = torch.cat([generators.model.plus(x[n:n + 256]) for n in range(0, len(x), 256)])
        minus = torch.cat([generators.model.minus(x[n:n + 256]) for n in range(0, len(x), 256)])
    return Counterfactuals(malignant=bundle.to_hu(plus), benign=bundle.to_hu(minus),
                           malignant_probability=bundle.probability(plus),
                           benign_probability=bundle.probability(minus))


def _maps(method: str, bundle: Bundle, patches_hu: np.ndarray, context, generators):
    """Relevance of a base method, and the counterfactuals for cycle-am (else None)."""
    if method == CYCLE_AM:
        pair = counterfactuals(bundle, patches_hu, generators)
        return (pair.malignant - pair.benign).astype(np.float32), pair
    return attribution.attribute(method, bundle.to_tensor(patches_hu), context), None


def explain(bundle, patches_hu: np.ndarray, method: str, return_details: bool = False, cycle_am=None, **options):
    """Relevance maps (N, H, W) float32 for HU patches (N, H, W): > 0 speaks for malignant.

    ``bundle`` is a classifier Bundle or a name / folder for ``load_bundle``. With ``return_details`` the
    details come too: the ``IterativeResult`` (every pass) for ``iterative:<method>``, the
    ``Counterfactuals`` for ``cycle-am`` (``cycle_am``: its bundle, default the shipped one).
    ``options`` go to the method (``layer`` for Grad-CAM, ``steps`` / ``internal_batch_size`` for
    integrated gradients)."""
    check_method(method)
    bundle = load_bundle(bundle)
    if bundle.config.get("kind", "classifier") != "classifier":
        raise XAIExplainError(f"{bundle.path} is a {bundle.config.get('kind')} bundle, not a classifier")
    patches_hu = np.asarray(patches_hu, np.float32)
    if patches_hu.ndim != 3:
        raise XAIExplainError(f"patches must be (N, H, W), not of shape {patches_hu.shape}")
    if not np.isfinite(patches_hu).all():
        raise XAIExplainError("the patches hold NaN or infinite values")
    context = _context(bundle, options)
    if not method.startswith(ITERATIVE_PREFIX):
        maps, details = _maps(method, bundle, patches_hu, context, cycle_am)
        return (maps, details) if return_details else maps
    base = method[len(ITERATIVE_PREFIX):]
    result = iterative.augment_evidence(
        patches_hu, lambda images: _maps(base, bundle, images, context, cycle_am)[0], bundle.predict,
        bundle.threshold)
    return (result.augmented, result) if return_details else result.augmented


@dataclass
class SeriesExplanation:
    """Relevance and label images in the series' exact geometry, per method, and per-nodule results."""

    relevance: dict[str, sitk.Image]
    labels: dict[str, sitk.Image]
    nodules: list[dict]
    sites: list[NoduleSite]
    stacks: list[PatchStack]
    maps: dict[str, list[np.ndarray]] = field(default_factory=dict)  # per method, per nodule (slices, H, W)
    # for cycle-am: the series with each nodule's patches replaced by G+(x) ("malignant") and G-(x) ("benign")
    counterfactuals: dict[str, sitk.Image] = field(default_factory=dict)


def evidence_labels(relevance: np.ndarray) -> np.ndarray:
    """uint8 label map: 1 malignant evidence (relevance at or above Otsu's threshold of the positive
    values), 2 benign evidence (likewise for the negative values), 0 elsewhere."""
    labels = np.zeros(relevance.shape, np.uint8)
    for value, sign in ((EVIDENCE_LABELS["malignant evidence"], 1.0), (EVIDENCE_LABELS["benign evidence"], -1.0)):
        side = sign * relevance
        positive = side[side > 0]
        if positive.size > 1 and np.ptp(positive) > 0:
            labels[side >= threshold_otsu(positive)] = value
    return labels


def explain_series(image, points, bundle=None, methods=("saliency",), progress=None,
                   half_height_mm: float = DEFAULT_HALF_HEIGHT_MM, cycle_am=None, **options) -> SeriesExplanation:
    """Explain every nodule of a series: ``image`` a CTSeries or a SimpleITK image (HU, LPS), ``points``
    a list of LPS points, ``"lidc"`` (the annotated nodules, for a CTSeries of an LIDC scan) or a list of
    ``NoduleSite``."""
    for method in methods:
        check_method(method)
    bundle = load_bundle(bundle) if bundle is not None else load_bundle()
    sitk_image = image.image if isinstance(image, CTSeries) else image
    if isinstance(points, str):
        if points != "lidc" or not isinstance(image, CTSeries):
            raise XAIExplainError("points must be LPS points, or 'lidc' with a CTSeries read from an LIDC scan")
        sites = lidc_sites(image)
    elif len(points) and all(isinstance(p, NoduleSite) for p in points):
        sites = list(points)
    else:
        sites = point_sites(sitk_image, points, half_height_mm)
    if not sites:
        raise XAIExplainError("there is no nodule to explain")
    stacks = [extract_stack(sitk_image, site.center_lps, site.z_range) for site in sites]
    all_patches = np.concatenate([s.patches for s in stacks])
    bounds = np.cumsum([0] + [len(s.patches) for s in stacks])
    probabilities = bundle.predict(all_patches)
    if not np.isfinite(probabilities).all():  # finite weights and inputs can still overflow
        raise XAIExplainError(f"the classifier {bundle.path} gives no finite probability for some patches of this "
                              "series, so they cannot be explained")
    nodules = []
    for n, site in enumerate(sites):
        slice_p = probabilities[bounds[n]:bounds[n + 1]]
        row = {"name": site.name, "center_lps": list(site.center_lps), "slices": int(len(slice_p)),
               "slice_z": stacks[n].centers_lps[:, 2].tolist(), "probability": float(slice_p.mean()),
               "slice_probabilities": slice_p.tolist(), "threshold": bundle.threshold,
               "decision": "malignant" if slice_p.mean() >= bundle.threshold else "benign", "methods": {}}
        if site.lidc is not None:
            row["lidc"] = {k: v for k, v in site.lidc.to_json().items() if k not in ("annotation_ids",)}
        nodules.append(row)

    relevance, labels, per_method_maps, series_counterfactuals = {}, {}, {}, {}
    for method in methods:
        maps, details = explain(bundle, all_patches, method, return_details=True, cycle_am=cycle_am, **options)
        per_nodule = [maps[bounds[n]:bounds[n + 1]] for n in range(len(sites))]
        per_method_maps[method] = per_nodule
        volume = backproject(stacks, per_nodule, sitk_image)
        relevance[method] = volume
        label_image = sitk.GetImageFromArray(evidence_labels(sitk.GetArrayViewFromImage(volume)))
        label_image.CopyInformation(sitk_image)
        labels[method] = label_image
        for n, row in enumerate(nodules):
            nodule_maps = per_nodule[n]
            # the peak of the evidence for the decision: most malignant or most benign relevance
            evidence = nodule_maps if row["decision"] == "malignant" else -nodule_maps
            peak = np.unravel_index(np.argmax(evidence), nodule_maps.shape)
            stack = stacks[n]
            middle = (stack.size - 1) / 2
            peak_lps = stack.centers_lps[peak[0]] + (np.array([peak[2], peak[1], middle]) - middle) * \
                np.array([stack.pixel_mm, stack.pixel_mm, 0.0])
            entry = {"peak_lps": peak_lps.tolist(), "peak_relevance": float(nodule_maps[peak])}
            rows = slice(bounds[n], bounds[n + 1])
            if isinstance(details, iterative.IterativeResult):
                entry.update({"iterations": details.iterations[rows].tolist(),
                              "final_probabilities": details.final_probability[rows].tolist()})
            elif isinstance(details, Counterfactuals):
                entry.update({"counterfactual_malignant_probability": float(details.malignant_probability[rows].mean()),
                              "counterfactual_benign_probability": float(details.benign_probability[rows].mean()),
                              "counterfactual_malignant_slice_probabilities": details.malignant_probability[rows].tolist(),
                              "counterfactual_benign_slice_probabilities": details.benign_probability[rows].tolist()})
            row["methods"][method] = entry
        if isinstance(details, Counterfactuals):
            series_counterfactuals = {
                name: _replace_patches(sitk_image, stacks, [images[bounds[n]:bounds[n + 1]] for n in range(len(sites))])
                for name, images in (("malignant", details.malignant), ("benign", details.benign))}
        if progress is not None:
            progress(method)
    return SeriesExplanation(relevance=relevance, labels=labels, nodules=nodules, sites=sites, stacks=stacks,
                             maps=per_method_maps, counterfactuals=series_counterfactuals)


def _replace_patches(image: sitk.Image, stacks: list[PatchStack], values: list[np.ndarray]) -> sitk.Image:
    """The image with the voxels the patches cover replaced by the patches' values (float32)."""
    patched = sitk.GetArrayFromImage(backproject(stacks, values, image, background=np.nan))
    original = sitk.GetArrayFromImage(image).astype(np.float32)
    result = sitk.GetImageFromArray(np.where(np.isnan(patched), original, patched).astype(np.float32))
    result.CopyInformation(image)
    return result
