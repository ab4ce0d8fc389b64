"""Explaining every nodule of a whole series: patches through each nodule, the classifier's probability,
each method's maps put back into the series' exact geometry, label images and per-nodule results."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from xaiexplain.data.nodule_sites import NoduleSite, consensus_distance_mm, lidc_sites, point_sites
from xaiexplain.data.patches import (
    DEFAULT_HALF_HEIGHT_MM,
    PatchStack,
    VolumePatch,
    backproject,
    covered_region,
    extract_stack,
    extract_volume,
)
from xaiexplain.data.series import CTSeries
from xaiexplain.errors import XAIExplainError
from xaiexplain.explainers import iterative, references, registry
from xaiexplain.explainers.counterfactuals import Counterfactuals
from xaiexplain.explainers.labels import label_image
from xaiexplain.explainers.on_patches import explain, prepare_methods
from xaiexplain.models.bundles import DEFAULT_CLASSIFIER, load_bundle, shown_name


@dataclass
class SeriesExplanation:
    """Relevance and label images in the series' exact geometry, per method, and per-nodule results."""

    relevance: dict[str, sitk.Image]
    labels: dict[str, sitk.Image]
    nodules: list[dict]
    sites: list[NoduleSite]
    stacks: list[PatchStack]
    maps: dict[str, list[np.ndarray]] = field(default_factory=dict)  # per method, per nodule (slices, H, W)
    # for cycle-am: the part of the series its nodules' patches cover (the bounding box of their footprints,
    # on the series' grid with its own origin), with the patches replaced by G+(x) ("malignant") and G-(x)
    # ("benign"); outside it the counterfactual series is the series itself
    counterfactuals: dict[str, sitk.Image] = field(default_factory=dict)
    # per method with a reference image (integrated gradients, DeepLiftShap, their iterative forms): the one
    # chosen for this classifier and its scores (``explainers.references``)
    references: dict[str, references.ReferenceChoice] = field(default_factory=dict)

    def reference_warnings(self) -> list[str]:
        """One line per method whose reference the classifier does not call benign."""
        return list(dict.fromkeys(w for w in (c.warning() for c in self.references.values()) if w))


def explain_series(image, points, bundle=None, methods=("saliency",), progress=None,
                   half_height_mm: float = DEFAULT_HALF_HEIGHT_MM, cycle_am=None, method_options=None,
                   **options) -> SeriesExplanation:
    """Explain every nodule of a series, each method's maps put back into the series' exact geometry.

    Parameters
    ----------
    image : CTSeries or SimpleITK.Image
        The series in Hounsfield units with its LPS geometry (``xaiexplain.data.series.read_series``).
    points : list of (x, y, z), "lidc" or list of NoduleSite
        Nodule locations in LPS millimetres, or ``"lidc"``: the nodules the LIDC readers annotated (for a
        CTSeries of an LIDC scan, found by its SeriesInstanceUID).
    bundle : Bundle, str or path, optional
        The classifier (default the shipped ``demo-classifier``).
    methods : sequence of str
        Names from ``available_methods()``.
    progress : callable, optional
        Called with each method's name as it finishes.
    half_height_mm : float
        With points: the slices within this distance of a point are its nodule's.
    cycle_am : Bundle, str or path, optional
        The cycle-am bundle (the ``generators`` option).
    method_options : dict, optional
        Each method's options as ``prepare_methods`` resolved them for ``bundle`` (instead of ``**options``).
    **options
        Options of the methods; each goes to the methods that take it, and one that none of them takes
        raises XAIExplainError.

    Returns
    -------
    SeriesExplanation
        ``relevance`` and ``labels`` (SimpleITK images per method, the series' geometry), ``nodules``
        (per nodule: probability, decision, threshold, per method the peak and, for iterative methods,
        the passes; for LIDC sites where the peaks lie against the readers' consensus), ``maps`` (per method,
        per nodule), ``counterfactuals`` (cycle-am: G+(x) and G-(x) in the box the patches cover).

    Examples
    --------
    >>> import xaiexplain
    >>> from xaiexplain.data.series import read_series
    >>> ct = read_series("phantom/LIDC-IDRI-0078")  # doctest: +SKIP
    >>> result = xaiexplain.explain_series(ct, "lidc", methods=["lrp", "grad-cam"])  # doctest: +SKIP
    >>> result.relevance["lrp"].GetSize() == ct.image.GetSize()  # doctest: +SKIP
    True
    """
    if cycle_am is not None:
        options = {**options, "generators": cycle_am}
    bundle = load_series_classifier(bundle)
    # refuses unknown methods and options, and cycle-am generators of another classifier, before computing
    options_of = method_options if method_options is not None else prepare_methods(bundle, methods, options)
    sitk_image = image.image if isinstance(image, CTSeries) else image
    if isinstance(points, str):
        if points != "lidc" or not isinstance(image, CTSeries):
            raise XAIExplainError("points must be LPS points, or 'lidc' with a CTSeries read from an LIDC scan")
        sites = lidc_sites(image, with_masks=True)  # the masks: where the peaks lie against the readers' outline
    elif len(points) and all(isinstance(p, NoduleSite) for p in points):
        sites = list(points)
    else:
        sites = point_sites(sitk_image, points, half_height_mm)
    if not sites:
        raise XAIExplainError("there is no nodule to explain")
    stacks = [_patches_of(sitk_image, site, bundle.input) for site in sites]
    all_patches = np.concatenate([s.network_patches for s in stacks])
    bounds = np.cumsum([0] + [len(s.network_patches) for s in stacks])  # each nodule's rows of the model's input
    probabilities = bundle.predict(all_patches)
    if not np.isfinite(probabilities).all():  # finite weights and inputs can still overflow
        raise XAIExplainError(f"the classifier {bundle.path} gives no finite probability for some patches of this "
                              "series, so they cannot be explained")
    nodules = []
    for n, site in enumerate(sites):
        slice_p = probabilities[bounds[n]:bounds[n + 1]]
        row = {"name": site.name, "center_lps": list(site.center_lps), "slices": int(len(stacks[n].patches)),
               "slice_z": stacks[n].centers_lps[:, 2].tolist(), "probability": float(slice_p.mean()),
               "slice_probabilities": slice_p.tolist(), "threshold": bundle.threshold,
               "decision": "malignant" if slice_p.mean() >= bundle.threshold else "benign", "methods": {}}
        if isinstance(stacks[n], VolumePatch):  # one decision for the whole volume, its planes' z in slice_z
            del row["slice_probabilities"]
            row["volume"] = {"patch_size": list(bundle.input.patch_size),
                             "field_of_view_mm": list(bundle.input.field_of_view_mm)}
        if site.lidc is not None:
            row["lidc"] = {k: v for k, v in site.lidc.to_json().items() if k not in ("annotation_ids",)}
        nodules.append(row)

    relevance, labels, per_method_maps, series_counterfactuals = {}, {}, {}, {}
    for method in methods:
        maps, details = explain(bundle, all_patches, method, return_details=True, **options_of[method])
        # a 2.5D model's per-channel maps go back on the slices their channels were read from, a volume's
        # map on its planes
        per_nodule = [stacks[n].maps_on_slices(maps[bounds[n]:bounds[n + 1]]) for n in range(len(sites))]
        per_method_maps[method] = per_nodule
        volume = backproject(stacks, per_nodule, sitk_image)
        relevance[method] = volume
        method_labels = sitk.GetImageFromArray(label_image(sitk.GetArrayViewFromImage(volume),
                                                           registry.get(method).map_kind))
        method_labels.CopyInformation(sitk_image)
        labels[method] = method_labels
        for n, row in enumerate(nodules):
            nodule_maps = per_nodule[n]
            # the peak of what speaks for the decision
            evidence = registry.get(method).map_kind.for_decision(nodule_maps, row["decision"] == "malignant")
            peak = np.unravel_index(np.argmax(evidence), nodule_maps.shape)
            peak_lps = _patch_point_lps(stacks[n], *peak)
            entry = {"peak_lps": peak_lps.tolist(), "peak_relevance": float(nodule_maps[peak])}
            if sites[n].lidc is not None and sites[n].lidc.consensus is not None:
                entry.update(_peaks_against_consensus(sites[n], stacks[n], evidence, peak_lps))
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
                name: _replace_patches(sitk_image, stacks, [stacks[n].maps_on_slices(images[bounds[n]:bounds[n + 1]])
                                                            for n in range(len(sites))])
                for name, images in (("malignant", details.malignant), ("benign", details.benign))}
        if progress is not None:
            progress(method)
    chosen = {method: references.reference_choice(bundle, method) for method in methods}
    return SeriesExplanation(relevance=relevance, labels=labels, nodules=nodules, sites=sites, stacks=stacks,
                             maps=per_method_maps, counterfactuals=series_counterfactuals,
                             references={method: choice for method, choice in chosen.items() if choice is not None})


def load_series_classifier(bundle=None, device="cpu"):
    """The classifier bundle (default the shipped one) loaded, if its input spec is one series can be explained
    with: square patches (in-plane), of any size and field of view, of one slice, of neighbouring slices as
    channels (``extract_stack`` cuts them at the spec's) or volumes (``extract_volume``); otherwise one
    sentence, before a series is read."""
    bundle = load_bundle(DEFAULT_CLASSIFIER if bundle is None else bundle, device=device)
    spec = bundle.input
    if not spec.is_square:
        raise XAIExplainError(f"the classifier {shown_name(bundle.path)} reads patches of "
                              f"{' x '.join(map(str, spec.patch_size))} px across "
                              f"{' x '.join(f'{v:g}' for v in spec.field_of_view_mm)} mm; series are explained with "
                              f"square patches (other input specs: not yet)")
    return bundle


def _patches_of(image: sitk.Image, site: NoduleSite, spec) -> PatchStack:
    """What the model reads of one nodule: a volume about its centre (3D), else axial patches through it."""
    if spec.spatial_dims == 3:
        return extract_volume(image, site.center_lps, spec.patch_size, spec.field_of_view_mm)
    return extract_stack(image, site.center_lps, site.z_range, spec.patch_size[0], spec.field_of_view_mm[0],
                         spec.slices)


def _patch_point_lps(stack: PatchStack, n: int, row: int, column: int) -> np.ndarray:
    """LPS mm of pixel (row, column) of patch n."""
    middle = (stack.size - 1) / 2
    return stack.centers_lps[n] + (np.array([column, row, middle]) - middle) * np.array([stack.pixel_mm,
                                                                                          stack.pixel_mm, 0.0])


def _peaks_against_consensus(site: NoduleSite, stack: PatchStack, evidence: np.ndarray, peak_lps) -> dict:
    """Where the peak of the evidence for the decision lies against the readers' consensus mask: for the
    nodule's peak, inside or the distance in mm; for each slice's own peak, inside or not."""
    slice_peaks = [_patch_point_lps(stack, n, *np.unravel_index(np.argmax(plane), plane.shape))
                   for n, plane in enumerate(evidence)]
    distances = consensus_distance_mm(site, np.vstack([peak_lps, *slice_peaks]))
    return {"peak_in_consensus": bool(distances[0] == 0), "peak_distance_to_consensus_mm": float(distances[0]),
            "slice_peaks_in_consensus": [bool(d == 0) for d in distances[1:]]}


def _replace_patches(image: sitk.Image, stacks: list[PatchStack], values: list[np.ndarray]) -> sitk.Image:
    """The part of the image that the patches cover (the bounding box of their footprints, on the image's
    grid with its own origin) with the patches' values where they lie, float32: not a copy of the series."""
    regions = [covered_region(stack.slab_image(n), image) for stack in stacks for n in range(len(stack.patches))]
    regions = [region for region in regions if region is not None]
    start = np.min([region[0] for region in regions], axis=0)
    stop = np.max([np.add(*region) for region in regions], axis=0)
    crop = sitk.Cast(sitk.RegionOfInterest(image, (stop - start).tolist(), start.tolist()), sitk.sitkFloat32)
    patched = sitk.GetArrayFromImage(backproject(stacks, values, crop, background=np.nan))
    result = sitk.GetImageFromArray(np.where(np.isnan(patched), sitk.GetArrayViewFromImage(crop), patched)
                                    .astype(np.float32))
    result.CopyInformation(crop)
    return result
