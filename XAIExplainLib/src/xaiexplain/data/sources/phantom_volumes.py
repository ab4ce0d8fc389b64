"""3D patch sets rendered from the phantom, for a model that reads volumes (input ``spatial_dims`` 3): one
volume per labelled nodule about its consensus centroid, at the model's size and field of view per axis
(world-aligned, trilinear, ``data.patches.extract_volume``), with its 3D nodule, spicule and calcification
masks on the same grid (nearest neighbour); and nodule-free lung volumes of the same scans, by the criterion of
``data.lung_patches`` applied to the whole volume and its box kept NODULE_MARGIN_MM from every annotation."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from xaiexplain.data import lidc
from xaiexplain.data.geometry import ScanGeometry
from xaiexplain.data.lung_patches import nodule_boxes_lps, sample_lung_patches
from xaiexplain.data.patches import extract_volume
from xaiexplain.data.sources import phantom

REGION_MARGIN_VOXELS = 2  # rendered beyond the volume's box, so trilinear sampling at its border has data
LUNG_SLICES_PER_SCAN = 3  # whole slices rendered to find lung points for the lung volumes' centres
LUNG_STREAM = 13  # the seed stream of the lung volumes' slices and centres
ATTEMPTS_PER_VOLUME = 20


def region_about(geometry: ScanGeometry, centre_lps, field_of_view_mm) -> tuple[tuple[int, int], ...]:
    """Half-open (k, i, j) index ranges of the scan that hold the box of a volume about ``centre_lps``."""
    depth, height, width = (float(v) / 2 for v in field_of_view_mm)
    x, y, z = (float(c) for c in centre_lps)
    origin_x, origin_y, _ = geometry.index_to_lps((0, 0, 0))
    spacing = geometry.pixel_spacing
    margin_px = REGION_MARGIN_VOXELS * spacing
    i_range = (int(np.floor((y - height - margin_px - origin_y) / spacing)),
               int(np.ceil((y + height + margin_px - origin_y) / spacing)) + 1)
    j_range = (int(np.floor((x - width - margin_px - origin_x) / spacing)),
               int(np.ceil((x + width + margin_px - origin_x) / spacing)) + 1)
    slice_z = np.asarray(geometry.slice_z)
    margin_z = REGION_MARGIN_VOXELS * geometry.slice_spacing
    inside = np.flatnonzero((slice_z >= z - depth - margin_z) & (slice_z <= z + depth + margin_z))
    k_range = (int(inside[0]), int(inside[-1]) + 1) if len(inside) else (0, 0)
    clip = lambda r, n: (max(r[0], 0), min(r[1], n))  # noqa: E731
    return clip(k_range, geometry.shape[0]), clip(i_range, geometry.rows), clip(j_range, geometry.columns)


def region_image(geometry: ScanGeometry, offset, array: np.ndarray) -> sitk.Image:
    """A rendered region's array (z, y, x) as an image in the world (a regular scan's slice spacing)."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=np.float32))
    k0, i0, j0 = offset
    image.SetSpacing((geometry.pixel_spacing, geometry.pixel_spacing, geometry.slice_spacing))
    image.SetOrigin(tuple(float(v) for v in geometry.index_to_lps((i0, j0, k0))))
    return image


def volumes_at(geometry: ScanGeometry, scan_nodules, seed: int, centre_lps, size, field_of_view_mm,
               nodule_index: int | None = None) -> dict[str, np.ndarray]:
    """The phantom's volume about ``centre_lps`` and its masks (each (D, H, W)); the nodule mask that of
    ``nodule_index`` (None: no nodule's)."""
    box = region_about(geometry, centre_lps, field_of_view_mm)
    rendered = phantom.render_region(geometry, scan_nodules, seed, *box)
    offset = tuple(r[0] for r in box)
    own = rendered.nodule_labels == (nodule_index + 1 if nodule_index is not None else -1)
    layers = {"images": (rendered.hu, sitk.sitkLinear, -1024.0), "nodule_mask": (own, sitk.sitkNearestNeighbor, 0.0),
              "spicule_mask": (rendered.spicules, sitk.sitkNearestNeighbor, 0.0),
              "calcification_mask": (rendered.calcification, sitk.sitkNearestNeighbor, 0.0)}
    out = {}
    for name, (array, interpolator, outside) in layers.items():
        volume = extract_volume(region_image(geometry, offset, array), centre_lps, size, field_of_view_mm,
                                interpolator, outside)
        out[name] = volume.patches if name == "images" else volume.patches > 0.5
    out["images"] = np.round(out["images"]).astype(np.int16)
    return out


def nodule_volume(geometry: ScanGeometry, nodule: lidc.LidcNodule, scan_nodules: list[lidc.LidcNodule], seed: int,
                  size, field_of_view_mm) -> dict[str, np.ndarray]:
    """The one volume of a nodule, about its consensus centroid, as a patch set's rows (each (1, D, H, W))."""
    arrays = volumes_at(geometry, scan_nodules, seed, nodule.centroid_lps, size, field_of_view_mm,
                        nodule.nodule_index)
    result = {name: array[None] for name, array in arrays.items()}
    result["center_lps"] = np.asarray([nodule.centroid_lps], dtype=np.float32)
    return result


def phantom_planes(geometry: ScanGeometry, scan_nodules, seed: int, chosen):
    """``plane_of(n)`` for ``sample_lung_patches``: the scan's slice ``chosen[n]`` rendered whole (once) and its
    z; and the rendering of any slice ``k`` (cached alike)."""
    planes = {}

    def rendered_plane(k: int) -> sitk.Image:
        if k not in planes:
            hu = phantom.render_region(geometry, scan_nodules, seed, (k, k + 1), (0, geometry.rows),
                                       (0, geometry.columns)).hu[0]
            planes[k] = sitk.GetImageFromArray(hu.astype(np.float32))
            planes[k].SetSpacing((geometry.pixel_spacing, geometry.pixel_spacing))
            planes[k].SetOrigin(tuple(float(v) for v in geometry.index_to_lps((0, 0, k))[:2]))
        return planes[k]

    def plane_of(n: int):
        k = int(chosen[n])
        return rendered_plane(k), geometry.slice_z[k]

    return plane_of, rendered_plane


def scan_lung_volumes(geometry: ScanGeometry, scan_nodules: list[lidc.LidcNodule], seed: int, scan_number: int,
                      count: int, size, field_of_view_mm) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``count`` nodule-free lung volumes of a phantom scan (float32 (N, D, H, W) HU) and their centres:
    a centre drawn among the lung voxels of a few whole slices, its box (widened by the margin) missing every
    annotation, the volume parenchyma by ``is_nodule_free_lung`` (``sample_lung_patches``)."""
    rng = np.random.default_rng([seed, LUNG_STREAM, scan_number])
    chosen = rng.choice(geometry.shape[0], size=min(LUNG_SLICES_PER_SCAN, geometry.shape[0]), replace=False)
    plane_of, _ = phantom_planes(geometry, scan_nodules, seed, chosen)

    def volume(n: int, centre) -> np.ndarray:
        return volumes_at(geometry, scan_nodules, seed, centre, size, field_of_view_mm)["images"]

    return sample_lung_patches(plane_of, len(chosen), nodule_boxes_lps(scan_nodules, geometry), count, rng,
                               int(size[1]), float(field_of_view_mm[1]), attempts=ATTEMPTS_PER_VOLUME, cut=volume,
                               shape=tuple(size), depth_mm=float(field_of_view_mm[0]))
