"""The files ``xaiexplain explain`` writes for a series: relevance and label NRRDs in the series'
geometry, ``nodules.json`` and a PNG panel per nodule. Each file appears whole or not at all."""
from __future__ import annotations

from pathlib import Path

import SimpleITK as sitk

from . import __version__
from .bundles import load_bundle
from .explanation import EVIDENCE_LABELS, check_method, explain_series, method_file_name
from .figures import explanation_panel
from .files import atomic_path, write_json_atomic
from .series import read_series


def write_series_explanation(series_folder, out, methods, model=None, series_uid=None, use_lidc=False, points=None,
                             half_height_mm=5.0, grad_cam_layer=None, cycle_am=None, command: str = "",
                             progress=None, panels: bool = True):
    """Explain a series and write its files into ``out``; returns (the nodules.json summary, the
    SeriesExplanation). ``progress(method)`` is called as each method finishes; ``panels=False`` leaves
    out the PNG panels."""
    for method in methods:  # before any reading: a typo costs nothing
        check_method(method)
    bundle = load_bundle(model) if model else load_bundle()
    ct = read_series(series_folder, series_uid)
    options = {"layer": grad_cam_layer} if grad_cam_layer else {}
    result = explain_series(ct, "lidc" if use_lidc else points, bundle, methods, half_height_mm=half_height_mm,
                            cycle_am=cycle_am, progress=progress, **options)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for method in methods:
        for kind, images in (("relevance", result.relevance), ("labels", result.labels)):
            path = out / f"{kind}_{method_file_name(method)}.nrrd"
            with atomic_path(path) as temporary:
                sitk.WriteImage(images[method], str(temporary), useCompression=True)
    files = {m: {"relevance": f"relevance_{method_file_name(m)}.nrrd", "labels": f"labels_{method_file_name(m)}.nrrd"}
             for m in methods}
    for name, image in result.counterfactuals.items():
        files[f"counterfactual_{name}"] = f"counterfactual_{name}.nrrd"
        with atomic_path(out / files[f"counterfactual_{name}"]) as temporary:
            sitk.WriteImage(image, str(temporary), useCompression=True)
    for n, (site, stack) in enumerate(zip(result.sites, result.stacks) if panels else ()):
        titles = [f"z {z:.1f}  p {p:.2f}" for z, p in zip(stack.centers_lps[:, 2],
                                                          result.nodules[n]["slice_probabilities"])]
        row = result.nodules[n]
        explanation_panel(stack.patches, {m: result.maps[m][n] for m in methods}, out / f"panel_{site.name}.png",
                          titles, title=f"{ct.patient_id} {site.name}: p(malignant) {row['probability']:.2f} "
                                        f"({row['decision']}, threshold {row['threshold']:.2f})")
    summary = {"series_folder": str(series_folder), "patient_id": ct.patient_id,
               "series_instance_uid": ct.series_instance_uid, "model": str(bundle.path),
               "methods": list(methods), "command": command, "library_version": __version__,
               "files": files,
               "label_values": EVIDENCE_LABELS,
               "nodules": result.nodules}
    write_json_atomic(out / "nodules.json", summary)
    return summary, result
