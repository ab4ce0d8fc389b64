"""The files ``xaiexplain explain`` writes for a series: relevance and label NRRDs in the series'
geometry, ``nodules.json`` and a PNG panel per nodule, and on request the same images as DICOM (a Segmentation
and a Parametric Map per method, ``io.dicom_outputs``) and NIfTI (``io.nifti_outputs``), written as one output
set (whole or absent)."""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from xaiexplain import __version__
from xaiexplain.data.nodule_sites import lidc_sites, point_sites
from xaiexplain.data.patches import DEFAULT_HALF_HEIGHT_MM, PatchStack, VolumePatch
from xaiexplain.data.series import read_series
from xaiexplain.devices import select_device
from xaiexplain.explainers import registry
from xaiexplain.explainers.on_patches import prepare_methods
from xaiexplain.explainers.on_series import explain_series, load_series_classifier
from xaiexplain.io import dicom_outputs
from xaiexplain.io.figures import explanation_panel
from xaiexplain.io.files import OutputSet, output_set, safe_name
from xaiexplain.io.nifti_outputs import nifti_name, write_nifti
from xaiexplain.io.output_formats import DICOM, NIFTI, NRRD, checked_formats
from xaiexplain.models.bundles import DEFAULT_CLASSIFIER

SERIES_MANIFEST = "nodules.json"
EXPLAIN_OWNER = "xaiexplain explain"  # recorded in the manifest: the batch script's scenes use the same names
VOLUME_PANEL_PLANES = 5  # rows of a volume's panel: its planes, evenly through it
COUNTERFACTUAL_DESCRIPTIONS = {"malignant": "G+(x): the nodules' box made malignant",
                               "benign": "G-(x): the nodules' box made benign"}


def panel_file_name(nodule_name: str) -> str:
    return f"panel_{safe_name(nodule_name)}.png"


def recorded_options(options: dict) -> dict:
    """The methods' options as ``nodules.json`` records them (a bundle given as an object by its path)."""
    return {name: value if isinstance(value, (str, int, float, bool)) else str(getattr(value, "path", value))
            for name, value in options.items()}


def write_series_explanation(series_folder, out, methods, model=None, series_uid=None, use_lidc=False, points=None,
                             half_height_mm=5.0, options: dict | None = None, command: str = "",
                             progress=None, panels: bool = True, allow_gaps: bool = False, device: str = "cpu",
                             allow_implausible_hu: bool = False, formats=None):
    """Explain a series and write its files into ``out`` as one output set with ``nodules.json`` as its
    manifest (see ``files.output_set``: an existing ``out`` keeps every file that no earlier explanation
    wrote); returns (the nodules.json summary, the SeriesExplanation). ``options``: the methods' options
    (each goes to the methods that take it, e.g. ``layer``, ``generators``). ``progress(method)`` is called as
    each method finishes; ``panels=False`` leaves out the PNG panels; ``allow_gaps`` explains a series with
    missing slices on interpolated ones and records the gaps; ``allow_implausible_hu`` explains a series whose
    values are not plausible CT numbers; ``device`` is where the models run (``auto``: the GPU when there is
    one). ``formats`` (``io.output_formats``): NRRD always, and ``"dicom"`` and ``"nifti"`` on request. The
    series, its nodules and, for DICOM, the source UIDs a derived object references are checked before anything
    is written."""
    options = dict(options or {})
    recorded = recorded_options(options)
    formats = checked_formats(formats)
    if DICOM in formats:
        dicom_outputs.check_dicom_writer()
    device = select_device(device)
    bundle = load_series_classifier(model or DEFAULT_CLASSIFIER, device=device)
    # before any reading: a typo in an option; cycle-am's generators loaded once on the classifier's device,
    # and refused unless trained against it
    method_options = prepare_methods(bundle, methods, options)
    ct = read_series(series_folder, series_uid, allow_gaps=allow_gaps, allow_implausible_hu=allow_implausible_hu)
    source = dicom_outputs.dicom_source(ct, series_folder) if DICOM in formats else None
    sites = lidc_sites(ct, with_masks=True) if use_lidc else point_sites(ct.image, points or [], half_height_mm)
    identity = explanation_identity(ct.series_instance_uid, bundle.path, recorded, None if use_lidc else points or [],
                                    half_height_mm)
    with output_set(out, SERIES_MANIFEST, owner=EXPLAIN_OWNER) as written:  # checks out before computing
        result = explain_series(ct, sites, bundle, methods, progress=progress, method_options=method_options)
        files = write_copies(written, result, methods, formats, source, identity, Path(bundle.path).name, recorded)
        for n, (site, stack) in enumerate(zip(result.sites, result.stacks) if panels else ()):
            row = result.nodules[n]
            shown, titles = panel_rows(stack, row)
            explanation_panel(stack.patches[shown], {m: result.maps[m][n][shown] for m in methods},
                              written.path(panel_file_name(site.name)), titles,
                              title=f"{ct.patient_id} {site.name}: p(malignant) {row['probability']:.2f} "
                                    f"({row['decision']}, threshold {row['threshold']:.2f})")
        written.manifest_data = {
            "series_folder": str(series_folder), "patient_id": ct.patient_id,
            "series_instance_uid": ct.series_instance_uid, "model": str(bundle.path),
            "methods": list(methods), "options": recorded, "nodules_from": "lidc" if use_lidc else "points",
            "command": command,
            "library_version": __version__, "formats": list(formats),
            "files": files, "label_values": {m: dict(registry.get(m).map_kind.labels) for m in methods},
            "slice_gaps_mm": [list(gap) for gap in ct.gaps],
            "references": {method: choice.to_json() for method, choice in result.references.items()},
            "reference_warnings": result.reference_warnings(),
            "nodules": result.nodules}
    return written.manifest_data, result


def explanation_identity(series_instance_uid: str, model, recorded: dict, points, half_height_mm: float
                         = DEFAULT_HALF_HEIGHT_MM) -> tuple[str, ...]:
    """What an explanation's DICOM objects' UIDs are made of, so that the same explanation of the same series
    gets the same UIDs from ``explain``, the batch script and the Slicer panel: the series, the library's
    version, the model's path, the options as recorded, and the nodules (``points`` None: the LIDC
    annotations; else the LPS points and the half height of their slices)."""
    nodules = "lidc" if points is None else [list(map(float, p)) for p in points] + [half_height_mm]
    return (series_instance_uid, f"xaiexplain {__version__}", str(model), json.dumps(recorded, sort_keys=True),
            json.dumps(nodules))


def write_copies(written: OutputSet, result, methods, formats, source, identity, model_name: str,
                 options: dict) -> dict:
    """``write_images`` with a ``DicomWriter`` of ``source`` (a ``DicomSource``) when ``formats`` holds DICOM;
    ``result`` may be a SeriesExplanation or the Slicer bridge's ExplanationOutput."""
    with (dicom_outputs.dicom_writer(source, identity, model_name) if DICOM in formats
          else contextlib.nullcontext()) as dicom:
        return write_images(written, result, methods, formats, dicom, options)


def write_images(written: OutputSet, result, methods, formats, dicom, options: dict) -> dict:
    """Each method's relevance and labels, and cycle-am's counterfactuals, in ``formats`` (NRRD; NIfTI; DICOM
    through ``dicom``, a ``DicomWriter``); returns the manifest's ``files``: per method its NRRD names under
    ``relevance`` and ``labels`` and the others under ``<kind>_nifti`` and ``<kind>_dicom`` (null: a label image
    without any label, which no DICOM Segmentation can hold); ``counterfactual_<side>[_nifti|_dicom]``. The
    batch script leaves NRRD out of ``formats``: its scene stores those images itself."""
    files = {}
    for method in methods:
        record = registry.get(method)
        named = files[method] = {}
        for kind, images in (("relevance", result.relevance), ("labels", result.labels)):
            nrrd = f"{kind}_{record.file_name}.nrrd"
            if NRRD in formats:
                named[kind] = nrrd
                sitk.WriteImage(images[method], str(written.path(nrrd)), useCompression=True)
            if NIFTI in formats:
                named[f"{kind}_nifti"] = nifti_name(nrrd)
                write_nifti(images[method], written.path(named[f"{kind}_nifti"]))
        if dicom is not None:
            named["relevance_dicom"] = f"relevance_{record.file_name}.dcm"
            dicom.relevance_map(record, result.relevance[method], written.path(named["relevance_dicom"]))
            named["labels_dicom"] = None
            if dicom_outputs.has_segments(result.labels[method]):
                named["labels_dicom"] = f"labels_{record.file_name}.dcm"
                dicom.segmentation(record, result.labels[method], written.path(named["labels_dicom"]),
                                   {name: value for name, value in options.items() if name in record.defaults})
    for name, image in result.counterfactuals.items():
        stem = f"counterfactual_{name}"
        if NRRD in formats:
            files[stem] = f"{stem}.nrrd"
            sitk.WriteImage(image, str(written.path(files[stem])), useCompression=True)
        if NIFTI in formats:
            files[f"{stem}_nifti"] = nifti_name(f"{stem}.nrrd")
            write_nifti(image, written.path(files[f"{stem}_nifti"]))
        if dicom is not None:
            files[f"{stem}_dicom"] = f"{stem}.dcm"
            dicom.counterfactual(name, image, written.path(files[f"{stem}_dicom"]),
                                 COUNTERFACTUAL_DESCRIPTIONS.get(name, f"the {name} counterfactual"))
    return files


def panel_rows(stack: PatchStack, row: dict) -> tuple[np.ndarray, list[str]]:
    """Which planes of a nodule's patches a panel shows, and their titles: every slice with its probability;
    of a volume, VOLUME_PANEL_PLANES planes evenly through it (one probability: the panel's title)."""
    if isinstance(stack, VolumePatch):
        shown = np.unique(np.linspace(0, len(stack.patches) - 1, VOLUME_PANEL_PLANES).round().astype(int))
        return shown, [f"z {stack.centers_lps[k, 2]:.1f}" for k in shown]
    titles = [f"z {z:.1f}  p {p:.2f}" for z, p in zip(stack.centers_lps[:, 2], row["slice_probabilities"])]
    return np.arange(len(stack.patches)), titles
