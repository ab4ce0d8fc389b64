"""Explaining a classifier's decisions: on patches (``explain``) and on a whole series
(``explain_series``), with the method names of DESIGN.md, the same in Python, CLI and Slicer.

Methods: the attribution methods of ``xaiexplain.attribution`` and ``iterative:<method>`` for any of
them (iterative augmentation of visual evidence, ``xaiexplain.iterative``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from skimage.filters import threshold_otsu

from . import attribution, iterative
from .bundles import Bundle, load_bundle
from .errors import XAIExplainError
from .patch_stacks import NoduleSite, lidc_sites, point_sites
from .patches import DEFAULT_HALF_HEIGHT_MM, PatchStack, backproject, extract_stack
from .series import CTSeries

ITERATIVE_PREFIX = "iterative:"
EVIDENCE_LABELS = {"malignant evidence": 1, "benign evidence": 2}


def available_methods() -> list[str]:
    return list(attribution.METHODS) + [ITERATIVE_PREFIX + m for m in attribution.METHODS]


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


def explain(bundle, patches_hu: np.ndarray, method: str, return_details: bool = False, **options):
    """Relevance maps (N, H, W) float32 for HU patches (N, H, W): > 0 speaks for malignant.

    ``bundle`` is a Bundle or a name / folder for ``load_bundle``. For ``iterative:<method>`` with
    ``return_details`` the ``IterativeResult`` (every pass) comes too. ``options`` go to the method
    (``layer`` for Grad-CAM, ``steps`` / ``internal_batch_size`` for integrated gradients)."""
    check_method(method)
    bundle = load_bundle(bundle)
    patches_hu = np.asarray(patches_hu, np.float32)
    if patches_hu.ndim != 3:
        raise XAIExplainError(f"patches must be (N, H, W), not of shape {patches_hu.shape}")
    if not np.isfinite(patches_hu).all():
        raise XAIExplainError("the patches hold NaN or infinite values")
    context = _context(bundle, options)
    if not method.startswith(ITERATIVE_PREFIX):
        maps = attribution.attribute(method, bundle.to_tensor(patches_hu), context)
        return (maps, None) if return_details else maps
    base = method[len(ITERATIVE_PREFIX):]
    result = iterative.augment_evidence(
        patches_hu, lambda images: attribution.attribute(base, bundle.to_tensor(images), context),
        bundle.predict, bundle.threshold)
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


def evidence_labels(relevance: np.ndarray) -> np.ndarray:
    """uint8 label map: 1 malignant evidence (relevance at or above Otsu's threshold of the positive
    values), 2 benign evidence (likewise for the negative values), 0 elsewhere."""
    labels = np.zeros(relevance.shape, np.uint8)
    for value, sign in ((1, 1.0), (2, -1.0)):
        side = sign * relevance
        positive = side[side > 0]
        if positive.size > 1 and np.ptp(positive) > 0:
            labels[side >= threshold_otsu(positive)] = value
    return labels


def explain_series(image, points, bundle=None, methods=("saliency",), progress=None,
                   half_height_mm: float = DEFAULT_HALF_HEIGHT_MM, **options) -> SeriesExplanation:
    """Explain every nodule of a series: ``image`` a CTSeries or a SimpleITK image (HU, LPS), ``points``
    a list of LPS points or ``"lidc"`` (the annotated nodules, for a CTSeries of an LIDC scan)."""
    for method in methods:
        check_method(method)
    bundle = load_bundle(bundle) if bundle is not None else load_bundle()
    sitk_image = image.image if isinstance(image, CTSeries) else image
    if isinstance(points, str):
        if points != "lidc" or not isinstance(image, CTSeries):
            raise XAIExplainError("points must be LPS points, or 'lidc' with a CTSeries read from an LIDC scan")
        sites = lidc_sites(image)
    else:
        sites = point_sites(sitk_image, points, half_height_mm)
    if not sites:
        raise XAIExplainError("there is no nodule to explain")
    stacks = [extract_stack(sitk_image, site.center_lps, site.z_range) for site in sites]
    all_patches = np.concatenate([s.patches for s in stacks])
    bounds = np.cumsum([0] + [len(s.patches) for s in stacks])
    probabilities = bundle.predict(all_patches)
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

    relevance, labels, per_method_maps = {}, {}, {}
    for method in methods:
        maps, details = explain(bundle, all_patches, method, return_details=True, **options)
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
            if details is not None:
                iterations = details.iterations[bounds[n]:bounds[n + 1]]
                entry.update({"iterations": iterations.tolist(),
                              "final_probabilities": details.final_probability[bounds[n]:bounds[n + 1]].tolist()})
            row["methods"][method] = entry
        if progress is not None:
            progress(method)
    return SeriesExplanation(relevance=relevance, labels=labels, nodules=nodules, sites=sites, stacks=stacks,
                             maps=per_method_maps)
