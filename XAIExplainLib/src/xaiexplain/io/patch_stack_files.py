"""The files ``xaiexplain patches`` writes: one NRRD per nodule's patch stack (its world geometry kept),
``patches.json`` and a PNG contact sheet, as one output set."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from xaiexplain.data import lidc, series
from xaiexplain.data.nodule_sites import NoduleSite, consensus_label_image, lidc_sites, point_sites
from xaiexplain.data.patches import DEFAULT_HALF_HEIGHT_MM, PatchStack, extract_patch, extract_stack
from xaiexplain.io.figures import contact_sheet
from xaiexplain.io.files import output_set, safe_name


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
                       points=None, half_height_mm: float = DEFAULT_HALF_HEIGHT_MM, allow_gaps: bool = False,
                       allow_implausible_hu: bool = False) -> dict:
    """Read the series, take every nodule's patch stack and write them (NRRD + JSON + PNG) into ``out``,
    one output set with ``patches.json`` as its manifest."""
    ct = series.read_series(series_folder, series_uid, allow_gaps=allow_gaps, allow_implausible_hu=allow_implausible_hu)
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


def _consensus_outlines(ct: series.CTSeries, sites: list[NoduleSite], stacks: list[PatchStack]) -> list[np.ndarray]:
    """Each LIDC nodule's consensus mask on its own patch grid (nearest neighbour)."""
    label_image = consensus_label_image(ct, sites)
    return [np.stack([extract_patch(label_image, center, stack.size, stack.field_of_view_mm,
                                    sitk.sitkNearestNeighbor, 0.0) for center in stack.centers_lps])
            == site.lidc.nodule_index + 1
            for site, stack in zip(sites, stacks)]
