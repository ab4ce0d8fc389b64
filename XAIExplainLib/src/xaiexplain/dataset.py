"""The training patch set, rendered straight from the phantom without whole series (paper 1, 3.1).

Every labelled nodule (read by >= 3 radiologists, median malignancy != 3) gives one 64 x 64 patch
covering 45 mm per axial slice of its consensus mask, with the nodule, spicule and calcification masks
on the same grid. Patients, not patches, are split into train / validation / test with a fixed seed, so
no patient's nodules sit on both sides of a split.

Files in the output folder:
- ``patches.npz`` (load with ``numpy.load(path, allow_pickle=False)``): ``images`` int16 HU (N, 64, 64),
  ``nodule_mask``, ``spicule_mask``, ``calcification_mask`` bool (N, 64, 64), ``label`` int8 (1 malignant,
  0 benign), ``nodule`` int32 (row of ``nodules.json``), ``split`` int8 (0 train, 1 validation, 2 test),
  ``center_lps`` float32 (N, 3);
- ``nodules.json``: one row per nodule (LIDC record, split, first patch row and patch count);
- ``dataset.json``: how it was made and the counts.
"""
from __future__ import annotations

import json
import sys
import time
import zipfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from . import __version__, lidc, phantom
from .errors import XAIExplainError
from .files import output_set
from .geometry import ScanGeometry
from .patches import FIELD_OF_VIEW_MM, PATCH_SIZE, extract_patch

PATCH_SET_MANIFEST = "dataset.json"
SPLITS = ("train", "validation", "test")
SPLIT_FRACTIONS = (0.70, 0.15, 0.15)
# Extra pixels rendered around the patch's field of view so bilinear sampling at its border has data.
REGION_MARGIN_PX = 3


def split_patients(patient_ids, seed: int, fractions=SPLIT_FRACTIONS) -> dict[str, str]:
    """Patient id -> split name, a seeded shuffle of the sorted unique ids cut by ``fractions``."""
    patients = sorted(set(patient_ids))
    order = np.random.default_rng(seed).permutation(len(patients))
    cuts = np.round(np.cumsum(fractions)[:-1] * len(patients)).astype(int)
    split_of = {}
    for split, members in zip(SPLITS, np.split(order, cuts)):
        for m in members:
            split_of[patients[m]] = split
    return split_of


def nodule_region(geometry: ScanGeometry, nodule: lidc.LidcNodule, field_of_view_mm: float = FIELD_OF_VIEW_MM):
    """Half-open (k, i, j) index ranges of the box a nodule's patches need."""
    half_px = int(np.ceil(field_of_view_mm / 2 / geometry.pixel_spacing)) + REGION_MARGIN_PX
    ci, cj, _ = (int(round(c)) for c in nodule.centroid_ijk)
    (_, _), (_, _), (k0, k1) = nodule.bbox_ijk
    i_range = (max(0, ci - half_px), min(geometry.rows, ci + half_px + 1))
    j_range = (max(0, cj - half_px), min(geometry.columns, cj + half_px + 1))
    return (k0, k1), i_range, j_range


def nodule_patches(geometry: ScanGeometry, nodule: lidc.LidcNodule, scan_nodules: list[lidc.LidcNodule],
                   seed: int, size: int = PATCH_SIZE, field_of_view_mm: float = FIELD_OF_VIEW_MM) -> dict:
    """The patches of one nodule, rendered from the phantom region around it (all arrays (N, size, size))."""
    k_range, i_range, j_range = nodule_region(geometry, nodule, field_of_view_mm)
    volume = phantom.render_region(geometry, scan_nodules, seed, k_range, i_range, j_range)
    center_x, center_y, _ = nodule.centroid_lps
    layers = {
        "images": (volume.hu, sitk.sitkLinear, -1024.0),
        "nodule_mask": (volume.nodule_labels == nodule.nodule_index + 1, sitk.sitkNearestNeighbor, 0.0),
        "spicule_mask": (volume.spicules, sitk.sitkNearestNeighbor, 0.0),
        "calcification_mask": (volume.calcification, sitk.sitkNearestNeighbor, 0.0),
    }
    origin_x, origin_y, _ = geometry.index_to_lps((i_range[0], j_range[0], 0))
    out = {name: [] for name in layers}
    centers = []
    for n, k in enumerate(range(*k_range)):
        for name, (array, interpolator, outside) in layers.items():
            plane = sitk.GetImageFromArray(np.ascontiguousarray(array[n], dtype=np.float32))
            plane.SetSpacing((geometry.pixel_spacing, geometry.pixel_spacing))
            plane.SetOrigin((origin_x, origin_y))
            out[name].append(extract_patch(plane, (center_x, center_y), size, field_of_view_mm, interpolator, outside))
        centers.append((center_x, center_y, geometry.slice_z[k]))
    result = {name: np.stack(planes) for name, planes in out.items()}
    result["images"] = np.round(result["images"]).astype(np.int16)
    for name in ("nodule_mask", "spicule_mask", "calcification_mask"):
        result[name] = result[name] > 0.5
    result["center_lps"] = np.asarray(centers, dtype=np.float32)
    return result


def labelled_scans(patient_ids: list[str] | None = None) -> dict[tuple[str, str], list[lidc.LidcNodule]]:
    """(patient id, series UID) -> all nodules of each scan that has a labelled nodule."""
    by_series = defaultdict(list)
    for nodule in lidc.nodule_table():
        if patient_ids is None or nodule.patient_id in patient_ids:
            by_series[(nodule.patient_id, nodule.series_instance_uid)].append(nodule)
    return {key: nodules for key, nodules in by_series.items() if any(n.label for n in nodules)}


def held_out_patients(seed: int = 0, split: str = "test") -> list[str]:
    """The patients of one split of the full patch set made with ``seed``."""
    split_of = split_patients([patient for patient, _ in labelled_scans()], seed)
    return sorted(patient for patient, s in split_of.items() if s == split)


def render_patch_set(out_dir, seed: int = 0, patient_ids: list[str] | None = None, progress: bool = True,
                     command: str | None = None) -> dict:
    """Render the patch set into ``out_dir`` (one output set, ``dataset.json`` its manifest) and return its
    summary."""
    started = time.time()
    lidc.nodule_table(progress=progress)  # build the cache with a progress bar on the first run
    labelled_series = labelled_scans(patient_ids)
    if not labelled_series:
        raise lidc.LidcError("none of the requested scans has a nodule with a benign or malignant label")
    with output_set(out_dir, PATCH_SET_MANIFEST) as written:  # checks that out_dir is writable before rendering
        summary = _render_patch_set(written, labelled_series, seed, progress, command, started)
    return summary


def _render_patch_set(written, labelled_series, seed, progress, command, started) -> dict:
    split_of = split_patients([patient for patient, _ in labelled_series], seed)

    arrays = defaultdict(list)
    rows = []
    n_patches = 0
    series_items = sorted(labelled_series.items())
    if progress:
        from tqdm import tqdm

        series_items = tqdm(series_items, desc="phantom patches", unit="scan", file=sys.stderr)
    for (patient_id, series_uid), nodules in series_items:
        geometry = lidc.scan_geometry(series_uid)
        for nodule in nodules:
            lidc.load_consensus(nodule)
        for nodule in nodules:
            if nodule.label is None:
                continue
            patches = nodule_patches(geometry, nodule, nodules, seed)
            count = len(patches["images"])
            for name, value in patches.items():
                arrays[name].append(value)
            split = split_of[patient_id]
            arrays["label"].append(np.full(count, nodule.label == "malignant", np.int8))
            arrays["nodule"].append(np.full(count, len(rows), np.int32))
            arrays["split"].append(np.full(count, SPLITS.index(split), np.int8))
            rows.append({**nodule.to_json(), "split": split, "first_patch": n_patches, "patch_count": count})
            n_patches += count

    counts = {split: {label: {"nodules": sum(r["split"] == split and r["label"] == label for r in rows),
                              "patches": sum(r["patch_count"] for r in rows
                                             if r["split"] == split and r["label"] == label)}
                      for label in ("benign", "malignant")}
              for split in SPLITS}
    summary = {
        "format": "xaiexplain-patch-set",
        "version": 1,
        "library_version": __version__,
        "command": command,
        "seed": seed,
        "patch_size": PATCH_SIZE,
        "field_of_view_mm": FIELD_OF_VIEW_MM,
        "patients": len({r["patient_id"] for r in rows}),
        "nodules": len(rows),
        "patches": n_patches,
        "counts": counts,
        "seconds": round(time.time() - started, 1),
    }
    _write_patch_set_files(written, {name: np.concatenate(parts) for name, parts in arrays.items()}, rows, summary)
    return summary


def write_patch_set(out_dir, arrays: dict[str, np.ndarray], nodules: list[dict], summary: dict) -> None:
    """Write a patch set folder (one output set) in the format ``load_patch_set`` reads."""
    with output_set(out_dir, PATCH_SET_MANIFEST) as written:
        _write_patch_set_files(written, arrays, nodules, summary)


def _write_patch_set_files(written, arrays, nodules, summary) -> None:
    np.savez_compressed(written.path("patches.npz"), **arrays)
    written.write_json("nodules.json", nodules)
    written.manifest_data = summary


def load_patch_set(folder) -> tuple[dict[str, np.ndarray], list[dict], dict]:
    """Arrays, nodule rows and summary of a patch set written by ``render_patch_set`` (no pickles)."""
    folder = Path(folder)
    files = [folder / "patches.npz", folder / "nodules.json", folder / PATCH_SET_MANIFEST]
    if not all(f.is_file() for f in files):
        raise XAIExplainError(f"{folder} is not a patch set: it lacks patches.npz, nodules.json or dataset.json "
                              "(make one with `xaiexplain phantom --patches --out FOLDER`)")
    try:
        with np.load(files[0], allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
        return arrays, json.loads(files[1].read_text()), json.loads(files[2].read_text())
    except (ValueError, OSError, zipfile.BadZipFile) as error:
        raise XAIExplainError(f"the patch set in {folder} cannot be read ({error})") from None
