"""The training patch set rendered straight from the phantom, region by region around every labelled
nodule: one 64 x 64 patch covering 45 mm per axial slice through the nodule (bilinear), with its nodule,
spicule and calcification masks, labels and ratings, split by patient (``xaiexplain phantom --patches``);
and beside them nodule-free lung patches of the same scans (``data.lung_patches``)."""
from __future__ import annotations

import sys
import time
import numpy as np
import SimpleITK as sitk

from xaiexplain import __version__
from xaiexplain.data import lidc
from xaiexplain.data.geometry import ScanGeometry
from xaiexplain.data.lung_patches import (
    CRITERION,
    LUNG_PATCHES_PER_SCAN,
    LungPatchRows,
    is_nodule_free_lung,
    nodule_boxes_lps,
    sample_lung_patches,
)
from xaiexplain.data.patch_set import (
    PATCH_SET_MANIFEST,
    SPLITS,
    PatchSetRows,
    full_set_split,
    labelled_scans,
    write_patch_set_files,
)
from xaiexplain.data.patches import FIELD_OF_VIEW_MM, OUTSIDE_HU, PATCH_SIZE, extract_patch
from xaiexplain.data.sources import phantom
from xaiexplain.data.sources.phantom_volumes import nodule_volume, phantom_planes, scan_lung_volumes
from xaiexplain.errors import XAIExplainError
from xaiexplain.io.files import output_set

# Extra pixels rendered around the patch's field of view so bilinear sampling at its border has data.
REGION_MARGIN_PX = 3
# Nodule-free lung patches of a scan (``phantom --patches --lung-patches``, LUNG_PATCHES_PER_SCAN by default)
# are drawn from this many whole slices rendered at random (a slice renders in about 0.1 s, a patch's region
# in much less, but a random lung point needs the whole slice to be found).
LUNG_SLICES_PER_SCAN = 3
LUNG_STREAM = 11  # the seed stream of the lung patches' slices and centres


def nodule_region(geometry: ScanGeometry, nodule: lidc.LidcNodule, field_of_view_mm: float = FIELD_OF_VIEW_MM):
    """Half-open (k, i, j) index ranges of the box a nodule's patches need."""
    half_px = int(np.ceil(field_of_view_mm / 2 / geometry.pixel_spacing)) + REGION_MARGIN_PX
    ci, cj, _ = (int(round(c)) for c in nodule.centroid_ijk)
    (_, _), (_, _), (k0, k1) = nodule.bbox_ijk
    i_range = (max(0, ci - half_px), min(geometry.rows, ci + half_px + 1))
    j_range = (max(0, cj - half_px), min(geometry.columns, cj + half_px + 1))
    return (k0, k1), i_range, j_range


def nodule_patches(geometry: ScanGeometry, nodule: lidc.LidcNodule, scan_nodules: list[lidc.LidcNodule],
                   seed: int, size: int = PATCH_SIZE, field_of_view_mm: float = FIELD_OF_VIEW_MM,
                   slices: int = 1) -> dict:
    """The patches of one nodule, rendered from the phantom region around it (all arrays (N, size, size));
    ``slices`` > 1: ``images`` (N, slices, size, size), each patch with its neighbouring slices as channels (the
    scan's edge slice repeated beyond it), the masks those of the patch's own slice."""
    k_range, i_range, j_range = nodule_region(geometry, nodule, field_of_view_mm)
    half = slices // 2
    rendered = (max(k_range[0] - half, 0), min(k_range[1] + half, geometry.shape[0]))
    volume = phantom.render_region(geometry, scan_nodules, seed, rendered, i_range, j_range)
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
    def patch_of(array, k, interpolator, outside):
        plane = sitk.GetImageFromArray(np.ascontiguousarray(array[k - rendered[0]], dtype=np.float32))
        plane.SetSpacing((geometry.pixel_spacing, geometry.pixel_spacing))
        plane.SetOrigin((origin_x, origin_y))
        return extract_patch(plane, (center_x, center_y), size, field_of_view_mm, interpolator, outside)

    for k in range(*k_range):
        for name, (array, interpolator, outside) in layers.items():
            if name == "images" and slices > 1:
                neighbours = np.clip(np.arange(k - half, k + half + 1), rendered[0], rendered[1] - 1)
                out[name].append(np.stack([patch_of(array, m, interpolator, outside) for m in neighbours]))
            else:
                out[name].append(patch_of(array, k, interpolator, outside))
        centers.append((center_x, center_y, geometry.slice_z[k]))
    result = {name: np.stack(planes) for name, planes in out.items()}
    result["images"] = np.round(result["images"]).astype(np.int16)
    for name in ("nodule_mask", "spicule_mask", "calcification_mask"):
        result[name] = result[name] > 0.5
    result["center_lps"] = np.asarray(centers, dtype=np.float32)
    return result


def scan_lung_patches(geometry: ScanGeometry, scan_nodules: list[lidc.LidcNodule], seed: int, scan_number: int,
                      count: int = LUNG_PATCHES_PER_SCAN, size: int = PATCH_SIZE,
                      field_of_view_mm: float = FIELD_OF_VIEW_MM, slices: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``count`` nodule-free lung patches of a phantom scan and their centres (``sample_lung_patches``);
    ``slices`` > 1: each with its neighbouring slices as channels, as ``nodule_patches`` cuts them, every
    channel nodule-free lung."""
    rng = np.random.default_rng([seed, LUNG_STREAM, scan_number])
    chosen = rng.choice(geometry.shape[0], size=min(LUNG_SLICES_PER_SCAN, geometry.shape[0]), replace=False)
    plane_of, rendered_plane = phantom_planes(geometry, scan_nodules, seed, chosen)
    boxes = nodule_boxes_lps(scan_nodules, geometry)
    if slices == 1:
        return sample_lung_patches(plane_of, len(chosen), boxes, count, rng, size, field_of_view_mm)
    half = slices // 2

    def channels(n: int, centre) -> np.ndarray:
        k = int(chosen[n])
        return np.stack([extract_patch(rendered_plane(int(m)), centre[:2], size, field_of_view_mm, sitk.sitkLinear,
                                       OUTSIDE_HU)
                         for m in np.clip(np.arange(k - half, k + half + 1), 0, geometry.shape[0] - 1)])

    return sample_lung_patches(plane_of, len(chosen), boxes, count, rng, size, field_of_view_mm, cut=channels,
                               shape=(slices, size, size),
                               nodule_free=lambda patch: all(map(is_nodule_free_lung, patch)))


def render_patch_set(out_dir, seed: int = 0, patient_ids: list[str] | None = None, progress: bool = True,
                     command: str | None = None, lung_patches_per_scan: int = LUNG_PATCHES_PER_SCAN,
                     size=PATCH_SIZE, field_of_view_mm=FIELD_OF_VIEW_MM, slices: int = 1,
                     spatial_dims: int = 2) -> dict:
    """Render the patch set into ``out_dir`` (one output set, ``dataset.json`` its manifest) and return its
    summary; ``lung_patches_per_scan`` nodule-free lung patches of each scan beside the nodules' (0: none);
    patches of ``size`` px across ``field_of_view_mm`` (a model's input spec; default 64 px / 45 mm) and, for a
    2.5D model, ``slices`` neighbouring slices as channels. ``spatial_dims`` 3: one volume per nodule of
    ``size`` (depth, rows, columns; one number: a cube) voxels across ``field_of_view_mm`` along z, y, x
    (``phantom_volumes``), and lung volumes."""
    if slices < 1 or slices % 2 == 0:
        raise XAIExplainError(f"the slices of a patch must be an odd number (1 for 2D), not {slices}")
    if spatial_dims == 2 and not (np.isscalar(size) and np.isscalar(field_of_view_mm)):
        raise XAIExplainError("axial patches have one size and one field of view; give three per axis only for "
                              "volumes (spatial dims 3)")
    if spatial_dims == 3:
        from xaiexplain.models.contract import InputSpec  # its checks of a volume's axes (torch: only here)

        size, field_of_view_mm = InputSpec.volume_axes(size, field_of_view_mm, slices)
    started = time.time()
    lidc.nodule_table(progress=progress)  # build the cache with a progress bar on the first run
    labelled_series = labelled_scans(patient_ids)
    if not labelled_series:
        raise lidc.LidcError("none of the requested scans has a nodule with a benign or malignant label")
    with output_set(out_dir, PATCH_SET_MANIFEST) as written:  # checks that out_dir is writable before rendering
        summary = _render_patch_set(written, labelled_series, seed, progress, command, started, lung_patches_per_scan,
                                    size, field_of_view_mm, slices, spatial_dims)
    return summary


def _render_patch_set(written, labelled_series, seed, progress, command, started, lung_patches_per_scan, size,
                      field_of_view_mm, slices, spatial_dims) -> dict:
    split_of = full_set_split(seed)
    assembled = PatchSetRows()
    volumes = spatial_dims == 3
    lung = LungPatchRows(shape=tuple(size)) if volumes else LungPatchRows(size, slices)
    irregular = []
    series_items = sorted(labelled_series.items())
    if progress:
        from tqdm import tqdm

        series_items = tqdm(series_items, desc="phantom patches", unit="scan", file=sys.stderr)
    for scan_number, ((patient_id, series_uid), nodules) in enumerate(series_items):
        geometry = lidc.scan_geometry(series_uid)
        if volumes and not geometry.is_regular:  # a volume is resampled from a grid of one slice spacing
            irregular.append(patient_id)
            continue
        for nodule in nodules:
            lidc.load_consensus(nodule)
        for nodule in nodules:
            if nodule.label is None:
                continue
            patches = (nodule_volume(geometry, nodule, nodules, seed, size, field_of_view_mm) if volumes else
                       nodule_patches(geometry, nodule, nodules, seed, size, field_of_view_mm, slices))
            assembled.add(nodule.to_json(), split_of[patient_id], patches)
        if lung_patches_per_scan:
            lung.add(patient_id, SPLITS.index(split_of[patient_id]),
                     *(scan_lung_volumes(geometry, nodules, seed, scan_number, lung_patches_per_scan, size,
                                         field_of_view_mm) if volumes else
                       scan_lung_patches(geometry, nodules, seed, scan_number, lung_patches_per_scan, size,
                                         field_of_view_mm, slices)))
    if not assembled.rows:
        raise XAIExplainError("none of the requested scans has the regular slice spacing a volume is cut from")
    rows = assembled.rows
    summary = {
        "format": "xaiexplain-patch-set",
        "version": 1,
        "library_version": __version__,
        "command": command,
        "seed": seed,
        "patch_size": list(size) if volumes else size,
        "field_of_view_mm": list(field_of_view_mm) if volumes else field_of_view_mm,
        "slices": slices,
        "patients": len({r["patient_id"] for r in rows}),
        "nodules": len(rows),
        "patches": assembled.patches,
        "counts": assembled.counts(),
        "lung_patches": {"per_scan": lung_patches_per_scan, "criterion": CRITERION, "counts": lung.counts(SPLITS)},
        "seconds": round(time.time() - started, 1),
    }
    if volumes:
        summary.update(spatial_dims=3, scans_skipped_for_irregular_slices=irregular)
    write_patch_set_files(written, assembled.arrays(), rows, summary, lung.arrays() if lung_patches_per_scan else None)
    return summary
