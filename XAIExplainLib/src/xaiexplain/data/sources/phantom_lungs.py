"""The phantom's body and lungs, and the lung that reaches every annotated nodule.

The anatomy is one shape for every patient, scaled to the field of view; the nodules lie where the real
radiologists found them in the real patient's lungs. So about a quarter of the labelled nodules would lie
in the phantom's chest wall or mediastinum (LIDC-IDRI-0267's apical nodule in soft tissue: ring median
27 HU). Where less than half of a nodule's surroundings (in-plane, RING_MM from its edge, on its largest
slice) lie in the lung outline, a **lung pocket** joins the nodule to the nearest lung: every pixel within
the nodule's radius + LUNG_REACH_MM of the segment from its centroid to the nearest lung pixel is lung,
inside the body's soft tissue, on the nodule's slices and one above and below. Nodules the outline already
surrounds get no pocket, so their renderings do not change.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from xaiexplain.data.geometry import ScanGeometry
from xaiexplain.data.lidc import LidcNodule

# The surroundings of a nodule: in-plane distance from its edge (mm).
RING_MM = (3.0, 15.0)
# A pocket's lung reaches this far beyond the nodule's edge (mm), covering its surroundings.
LUNG_REACH_MM = 15.0
# The body's soft tissue (inside the subcutaneous fat), in units of the body ellipse.
INNER_BODY = 0.90
# The stream of random values the anatomy draws from; the lung outline draws first from it.
ANATOMY_STREAM = 7


def region_coordinates(geometry: ScanGeometry, k_range, i_range, j_range):
    """World x (1, 1, J), y (1, I, 1), z and height (K, 1, 1) of a half-open index box, and the width of
    the field of view (mm). Height runs from 0 (lowest slice) to 1 (highest)."""
    k, i, j = np.arange(*k_range), np.arange(*i_range), np.arange(*j_range)
    width = geometry.columns * geometry.pixel_spacing
    x = (geometry.origin_xy[0] + j * geometry.pixel_spacing).astype(np.float32)[None, None, :]
    y = (geometry.origin_xy[1] + i * geometry.pixel_spacing).astype(np.float32)[None, :, None]
    z_all = np.asarray(geometry.slice_z)
    z = z_all[k].astype(np.float32)[:, None, None]
    height = ((z - z_all[0]) / max(z_all[-1] - z_all[0], 1.0)).astype(np.float32)
    return x, y, z, height, width


def body_radius(x, y, width) -> np.ndarray:
    """Position in the body ellipse: < 1 inside the body, < INNER_BODY inside its soft tissue."""
    return np.sqrt((x / (0.46 * width)) ** 2 + ((y - 0.02 * width) / (0.33 * width)) ** 2)


def lung_outline(x, y, height, width, rng) -> np.ndarray:
    """Two lungs, largest at mid height, narrowing to the apex and above the diaphragm."""
    size = 0.62 + 0.38 * np.sin(np.pi * np.clip(0.12 + 0.88 * height, 0.0, 1.0))
    masks = []
    for side in (-1.0, 1.0):
        cx = side * 0.205 * width
        cy = -0.01 * width
        a = 0.155 * width * size
        b = 0.235 * width * size
        angle = np.arctan2(y - cy, x - cx)
        wobble = 1.0 + 0.06 * np.cos(3 * angle + rng.uniform(0, 2 * np.pi)) + 0.04 * np.cos(5 * angle + rng.uniform(0, 2 * np.pi))
        radius = np.sqrt(((x - cx) / a) ** 2 + ((y - cy) / b) ** 2)
        # the medial side is flattened by the mediastinum
        medial = side * (x - cx) > -0.75 * a
        masks.append((radius < wobble) & medial)
    return masks[0] | masks[1]


def heart_and_aorta(x, y, height, width) -> tuple[np.ndarray, np.ndarray]:
    """The heart (largest at the base) and the descending aorta."""
    aorta = np.hypot(x + 0.06 * width, y - 0.12 * width) < 0.045 * width
    heart = (np.hypot((x + 0.04 * width) / 1.25, y + 0.04 * width) < 0.16 * width * (1.05 - height)) & ~aorta
    return heart, aorta


def outline_lungs(geometry: ScanGeometry, seed: int, k_range, i_range, j_range) -> np.ndarray:
    """The lung outline without the heart on an index box, as the renderer draws it before any pocket."""
    x, y, _, height, width = region_coordinates(geometry, k_range, i_range, j_range)
    lungs = lung_outline(x, y, height, width, np.random.default_rng([seed, ANATOMY_STREAM]))
    heart, _ = heart_and_aorta(x, y, height, width)
    return lungs & ~np.broadcast_to(heart, lungs.shape)


@dataclass(frozen=True)
class LungPocket:
    """Lung within ``radius_px`` (in-plane) of the segment ``start_ij`` -> ``end_ij`` on slices ``k_range``."""

    start_ij: tuple[float, float]
    end_ij: tuple[float, float]
    radius_px: float
    k_range: tuple[int, int]

    def box(self, geometry: ScanGeometry):
        """The half-open (k, i, j) index box the pocket can reach."""
        reach = int(np.ceil(self.radius_px)) + 1
        i_lo, i_hi = sorted((self.start_ij[0], self.end_ij[0]))
        j_lo, j_hi = sorted((self.start_ij[1], self.end_ij[1]))
        return (self.k_range, (max(0, int(i_lo) - reach), min(geometry.rows, int(i_hi) + reach + 1)),
                (max(0, int(j_lo) - reach), min(geometry.columns, int(j_hi) + reach + 1)))

    def add_to(self, lungs: np.ndarray, inner_body: np.ndarray, k_range, i_range, j_range) -> None:
        """Make the pocket's pixels of the region lung (``lungs`` and ``inner_body`` cover the region)."""
        k0, k1 = max(self.k_range[0], k_range[0]), min(self.k_range[1], k_range[1])
        if k1 <= k0:
            return
        i = np.arange(*i_range, dtype=np.float64)[:, None]
        j = np.arange(*j_range, dtype=np.float64)[None, :]
        (si, sj), (ei, ej) = self.start_ij, self.end_ij
        di, dj = ei - si, ej - sj
        length2 = di * di + dj * dj
        t = np.clip(((i - si) * di + (j - sj) * dj) / length2, 0.0, 1.0) if length2 > 0 else 0.0
        inside = np.hypot(i - si - t * di, j - sj - t * dj) <= self.radius_px
        rows = slice(k0 - k_range[0], k1 - k_range[0])
        lungs[rows] |= inside[None] & np.broadcast_to(inner_body, lungs.shape)[rows]


def lung_pocket(geometry: ScanGeometry, nodule: LidcNodule, seed: int) -> LungPocket | None:
    """The pocket that joins a nodule to the lung, or None where the lung outline surrounds it already."""
    consensus = nodule.consensus
    if consensus is None:
        raise ValueError("the phantom needs the nodules' consensus masks (scan_nodules(..., with_masks=True))")
    areas = consensus.mask.sum(axis=(1, 2))
    if not areas.any():
        return None
    spacing = geometry.pixel_spacing
    n = int(np.argmax(areas))
    k = consensus.offset[0] + n
    pad = int(np.ceil(RING_MM[1] / spacing)) + 1
    plane = np.pad(consensus.mask[n], pad)
    i0, j0 = consensus.offset[1] - pad, consensus.offset[2] - pad
    box = ((k, k + 1), (i0, i0 + plane.shape[0]), (j0, j0 + plane.shape[1]))
    distance = ndimage.distance_transform_edt(~plane, sampling=spacing)
    ring = (distance > RING_MM[0]) & (distance <= RING_MM[1])
    if outline_lungs(geometry, seed, *box)[0][ring].mean() >= 0.5:
        return None
    # the nearest lung pixel of that slice, and the nodule's in-plane radius over all its slices
    lungs = outline_lungs(geometry, seed, (k, k + 1), (0, geometry.rows), (0, geometry.columns))[0]
    lung_pixels = np.argwhere(lungs)
    if len(lung_pixels) == 0:
        return None
    centre = np.asarray(nodule.centroid_ijk[:2])
    nearest = lung_pixels[np.argmin(((lung_pixels - centre) ** 2).sum(axis=1))]
    voxels = np.argwhere(consensus.mask)[:, 1:] + np.asarray(consensus.offset[1:])
    radius_px = float(np.sqrt(((voxels - centre) ** 2).sum(axis=1)).max()) + LUNG_REACH_MM / spacing
    drawn = np.flatnonzero(areas) + consensus.offset[0]
    return LungPocket(start_ij=(float(centre[0]), float(centre[1])), end_ij=(float(nearest[0]), float(nearest[1])),
                      radius_px=radius_px,
                      k_range=(max(0, int(drawn.min()) - 1), min(geometry.shape[0], int(drawn.max()) + 2)))


def lung_pockets(geometry: ScanGeometry, nodules: list[LidcNodule], seed: int, within=None) -> list[LungPocket]:
    """The pockets of a scan's nodules that reach into the index box ``within`` (all without it)."""
    pockets = []
    for nodule in nodules:
        pocket = lung_pocket(geometry, nodule, seed)
        if pocket is None:
            continue
        if within is not None and any(hi <= lo_w or lo >= hi_w
                                      for (lo, hi), (lo_w, hi_w) in zip(pocket.box(geometry), within)):
            continue
        pockets.append(pocket)
    return pockets
