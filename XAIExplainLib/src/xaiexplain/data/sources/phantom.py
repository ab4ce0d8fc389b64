"""The phantom: synthetic chest CT at a real LIDC scan's geometry, nodules drawn from the radiologists'
consensus contours with an appearance driven by their median ratings.

Everything is a function of world position and the seed, so a region renders exactly as the same
region of the whole scan (the training set is rendered region by region). The anatomy is scaled to the
field of view, since LIDC reconstructions choose the field of view to fit the body:
air, a body of fat and soft tissue, ribs, spine, mediastinum and heart, two lungs whose outline changes
from base to apex, branching-looking vessels (where two smooth random fields are both near zero) and
noise. Each nodule is drawn in its consensus mask:
- texture (1 ground glass .. 5 solid) sets its HU, from about -650 to +30;
- margin (1 poorly defined .. 5 sharp) sets how blurred its edge is;
- lobulation bulges the edge in a few lobes;
- spiculation (>= 2) adds thin strands radiating into the lung, recorded as ground truth;
- calcification (1 popcorn, 2 laminated, 3 solid, 4 non-central, 5 central, 6 absent) adds a dense core,
  recorded as ground truth.
The lung is widened around every nodule so a nodule's surroundings are lung, also against the wall, and
joined to a nodule the lung outline misses by a pocket of lung (``phantom_lungs``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from xaiexplain.data.geometry import ScanGeometry
from xaiexplain.data.lidc import LidcNodule
from xaiexplain.data.sources.phantom_lungs import (
    ANATOMY_STREAM,
    INNER_BODY,
    body_radius,
    heart_and_aorta,
    lung_outline,
    lung_pockets,
    region_coordinates,
)

AIR_HU = -1000.0
LUNG_HU = -860.0
FAT_HU = -100.0
SOFT_TISSUE_HU = 40.0
BLOOD_HU = 45.0
BONE_HU = 700.0
MARROW_HU = 250.0
NOISE_SD_HU = 18.0
# Nodule HU by median texture rating 1..5 (ground glass to solid).
TEXTURE_HU = np.array([-650.0, -480.0, -280.0, -80.0, 30.0])
# Edge blur (mm, logistic scale) by median margin rating 1..5 (poorly defined to sharp).
MARGIN_BLUR_MM = np.array([1.4, 0.9, 0.55, 0.3, 0.12])
CALCIFICATION_HU = 850.0
SPICULE_HU = -60.0
LUNG_AROUND_NODULE_MM = 8.0
# Extra room (mm) around a nodule's mask for its blur, lobes and spicules.
NODULE_MARGIN_MM = 14.0
SLAB_SLICES = 24  # whole scans are rendered in slabs of this many slices to bound memory


@dataclass
class PhantomVolume:
    hu: np.ndarray  # int16 (z, y, x)
    nodule_labels: np.ndarray  # uint16 (z, y, x): nodule_index + 1 inside each drawn nodule
    spicules: np.ndarray  # bool (z, y, x)
    calcification: np.ndarray  # bool (z, y, x)
    offset: tuple[int, int, int]  # (k0, i0, j0) of element [0, 0, 0] in the scan


def render_scan(geometry: ScanGeometry, nodules: list[LidcNodule], seed: int = 0) -> PhantomVolume:
    """The whole scan (slab by slab: identical to rendering it at once)."""
    sprites = _nodule_sprites(geometry, nodules, seed)
    pockets = lung_pockets(geometry, nodules, seed)
    slabs = [_render(geometry, sprites, pockets, seed, (k, min(k + SLAB_SLICES, geometry.shape[0])),
                     (0, geometry.rows), (0, geometry.columns)) for k in range(0, geometry.shape[0], SLAB_SLICES)]
    return PhantomVolume(hu=np.concatenate([s.hu for s in slabs]),
                         nodule_labels=np.concatenate([s.nodule_labels for s in slabs]),
                         spicules=np.concatenate([s.spicules for s in slabs]),
                         calcification=np.concatenate([s.calcification for s in slabs]), offset=(0, 0, 0))


def render_region(geometry: ScanGeometry, nodules: list[LidcNodule], seed: int, k_range, i_range,
                  j_range) -> PhantomVolume:
    """The half-open index box of the scan, exactly as in ``render_scan``. ``nodules`` must be all the
    scan's nodules (with consensus masks): a neighbour's spicules or lung pocket may reach into the box."""
    box = (tuple(k_range), tuple(i_range), tuple(j_range))
    sprites = _nodule_sprites(geometry, nodules, seed, within=box)
    return _render(geometry, sprites, lung_pockets(geometry, nodules, seed, within=box), seed, *box)


def render_region_without(geometry: ScanGeometry, nodules: list[LidcNodule], seed: int, k_range, i_range, j_range,
                          hidden) -> tuple[PhantomVolume, PhantomVolume]:
    """``render_region``, and the same region with the nodules of the indices ``hidden`` left undrawn (no
    nodule, spicules, calcification or label) while the lung around them stays as it was: the same image
    with those nodules removed and nothing else changed."""
    box = (tuple(k_range), tuple(i_range), tuple(j_range))
    sprites = _nodule_sprites(geometry, nodules, seed, within=box)
    pockets = lung_pockets(geometry, nodules, seed, within=box)
    drawn = [sprite for sprite in sprites if sprite.label - 1 not in set(hidden)]
    full = _render(geometry, sprites, pockets, seed, *box)
    return full, (full if len(drawn) == len(sprites) else _render(geometry, drawn, pockets, seed, *box, lung_of=sprites))


# -- anatomy ----------------------------------------------------------------------------------------------

def _render(geometry, sprites, pockets, seed, k_range, i_range, j_range, lung_of=None) -> PhantomVolume:
    """The region with ``sprites`` drawn, the lung widened around those of ``lung_of`` (default: the same)."""
    x, y, z, height, width = region_coordinates(geometry, k_range, i_range, j_range)
    k = np.arange(*k_range)
    rng = np.random.default_rng([seed, ANATOMY_STREAM])
    shape = (len(k), i_range[1] - i_range[0], j_range[1] - j_range[0])

    hu = np.full(shape, AIR_HU, np.float32)
    # body: an ellipse filling most of the field of view, subcutaneous fat under the skin
    body = body_radius(x, y, width)
    hu[np.broadcast_to(body < 1.0, shape)] = FAT_HU
    hu[np.broadcast_to(body < INNER_BODY, shape)] = SOFT_TISSUE_HU
    # spine (posterior, +y in LPS) and ribs
    spine = np.hypot(x, y - 0.25 * width) / (0.055 * width)
    hu = np.where(spine < 1.0, np.where(spine < 0.8, MARROW_HU, BONE_HU), hu)
    lungs = lung_outline(x, y, height, width, rng)  # the first draws of rng (lung_pocket relies on it)
    hu = np.where(_rib_mask(x, y, z, width, rng) & ~lungs & (body < 0.93), BONE_HU, hu)
    # mediastinum is soft tissue already; the aorta and heart are blood
    heart, aorta = heart_and_aorta(x, y, height, width)
    hu = np.where(aorta | heart, BLOOD_HU, hu)

    lungs = lungs & ~np.broadcast_to(heart, lungs.shape)
    for pocket in pockets:
        pocket.add_to(lungs, body < INNER_BODY, k_range, i_range, j_range)
    for sprite in sprites if lung_of is None else lung_of:
        sprite.paste(lungs, k_range, i_range, j_range, "lung", np.logical_or)
    # parenchyma varies slowly (gravity-dependent density posteriorly), vessels branch through it
    parenchyma = LUNG_HU + 25.0 * (y / width) + 12.0 * _smooth_field(x, y, z, rng, 6, 25.0, 60.0)
    hu = np.where(lungs, parenchyma, hu)
    vessels = _vessel_intensity(x, y, z, width, rng)
    hu = np.where(lungs, hu + vessels * (BLOOD_HU - hu), hu)

    labels = np.zeros(shape, np.uint16)
    spicules = np.zeros(shape, bool)
    calcification = np.zeros(shape, bool)
    for sprite in sprites:
        sprite.draw(hu, labels, spicules, calcification, k_range, i_range, j_range)

    hu += _noise(seed, k, i_range, j_range, geometry)
    return PhantomVolume(hu=np.clip(np.round(hu), -1024, 3071).astype(np.int16), nodule_labels=labels,
                         spicules=spicules, calcification=calcification,
                         offset=(int(k_range[0]), int(i_range[0]), int(j_range[0])))


def _rib_mask(x, y, z, width, rng) -> np.ndarray:
    """Oval rib cross-sections on a ring around the lungs; their angles drift with z (ribs slope)."""
    mask = np.zeros(np.broadcast_shapes(x.shape, y.shape, z.shape), bool)
    for n in range(18):
        base_angle = np.pi * (0.08 + 0.84 * (n % 9) / 8) + (np.pi if n >= 9 else 0.0)
        angle = base_angle + 0.012 * z / (0.05 * width) + rng.uniform(-0.05, 0.05)
        rx = 0.40 * width * np.cos(angle)
        ry = 0.285 * width * np.sin(angle) + 0.02 * width
        mask |= ((x - rx) / (0.022 * width)) ** 2 + ((y - ry) / (0.012 * width)) ** 2 < 1.0
    return mask


def _smooth_field(x, y, z, rng, waves: int, shortest_mm: float, longest_mm: float) -> np.ndarray:
    """A smooth random field of unit-ish amplitude: a sum of random plane waves in world mm."""
    field = np.zeros(np.broadcast_shapes(x.shape, y.shape, z.shape), np.float32)
    for _ in range(waves):
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        k = 2 * np.pi / rng.uniform(shortest_mm, longest_mm) * direction
        phase = rng.uniform(0, 2 * np.pi)
        field += np.cos(np.float32(k[0]) * x + np.float32(k[1]) * y + np.float32(k[2]) * z + np.float32(phase))
    return field * np.float32(np.sqrt(2.0 / waves))


def _vessel_intensity(x, y, z, width, rng) -> np.ndarray:
    """Tubes where two independent smooth fields are both near zero, thicker towards the hila."""
    f1 = _smooth_field(x, y, z, rng, 8, 18.0, 70.0)
    f2 = _smooth_field(x, y, z, rng, 8, 18.0, 70.0)
    hilum_distance = np.minimum(np.hypot(x - 0.1 * width, y), np.hypot(x + 0.1 * width, y)) / (0.3 * width)
    thickness = np.float32(0.24) * np.clip(1.2 - hilum_distance, 0.3, 1.0)
    closeness = np.sqrt(f1 * f1 + f2 * f2) / thickness
    return np.clip(1.6 - closeness, 0.0, 1.0)


def _noise(seed, k, i_range, j_range, geometry) -> np.ndarray:
    """Per-slice Gaussian noise over the whole 512 x 512 slice, cropped: the same for any region."""
    planes = []
    for slice_index in k:
        generator = np.random.default_rng([seed, 11, int(slice_index)])
        plane = generator.standard_normal((geometry.rows, geometry.columns), dtype=np.float32)
        # slight in-plane correlation, like reconstructed CT noise; filtered whole, then cropped
        plane = ndimage.uniform_filter(plane, size=2, mode="nearest")
        planes.append(plane[i_range[0]:i_range[1], j_range[0]:j_range[1]])
    noise = np.stack(planes) if planes else np.zeros((0, i_range[1] - i_range[0], j_range[1] - j_range[0]), np.float32)
    return np.float32(NOISE_SD_HU * 2.0) * noise


# -- nodules ----------------------------------------------------------------------------------------------

@dataclass
class _Sprite:
    """A nodule rendered on its own box (its mask's bounding box plus room for blur and spicules)."""

    offset: tuple[int, int, int]  # (k0, i0, j0) of the box in the scan
    label: int
    weight: np.ndarray  # float32: how much of the voxel is nodule (soft edge)
    value: np.ndarray  # float32 HU of the nodule where weight > 0
    mask: np.ndarray  # bool: the voxels labelled as this nodule
    spicule: np.ndarray  # float32 0..1
    calcified: np.ndarray  # bool
    lung: np.ndarray  # bool: where the lung is widened around the nodule

    def _overlap(self, k_range, i_range, j_range):
        shape = self.weight.shape
        sprite_slices, region_slices = [], []
        for offset, size, (lo, hi) in zip(self.offset, shape, (k_range, i_range, j_range)):
            start, stop = max(offset, lo), min(offset + size, hi)
            if stop <= start:
                return None
            sprite_slices.append(slice(start - offset, stop - offset))
            region_slices.append(slice(start - lo, stop - lo))
        return tuple(sprite_slices), tuple(region_slices)

    def paste(self, target, k_range, i_range, j_range, name, combine):
        overlap = self._overlap(k_range, i_range, j_range)
        if overlap is not None:
            sprite_box, region_box = overlap
            target[region_box] = combine(target[region_box], getattr(self, name)[sprite_box])

    def draw(self, hu, labels, spicules, calcification, k_range, i_range, j_range):
        overlap = self._overlap(k_range, i_range, j_range)
        if overlap is None:
            return
        s, r = overlap
        spicule = self.spicule[s]
        hu[r] += spicule * (SPICULE_HU - hu[r])
        spicules[r] |= (spicule > 0.5) & ~self.mask[s]
        weight = self.weight[s]
        hu[r] += weight * (self.value[s] - hu[r])
        labels[r] = np.where(self.mask[s], self.label, labels[r])
        hu[r] = np.where(self.calcified[s], np.maximum(hu[r], CALCIFICATION_HU), hu[r])
        calcification[r] |= self.calcified[s]


def _nodule_sprites(geometry, nodules, seed, within=None) -> list[_Sprite]:
    sprites = []
    for nodule in nodules:
        if nodule.consensus is None:
            raise ValueError("the phantom needs the nodules' consensus masks (scan_nodules(..., with_masks=True))")
        box = _sprite_box(geometry, nodule)
        if within is not None and any(hi <= lo_w or lo >= hi_w for (lo, hi), (lo_w, hi_w) in zip(box, within)):
            continue
        sprites.append(_nodule_sprite(geometry, nodule, box, seed))
    return sprites


def _sprite_box(geometry, nodule):
    margin_px = int(np.ceil(NODULE_MARGIN_MM / geometry.pixel_spacing))
    margin_k = int(np.ceil(NODULE_MARGIN_MM / 2 / geometry.slice_spacing)) + 1
    (i0, i1), (j0, j1), (k0, k1) = nodule.bbox_ijk
    return ((max(0, k0 - margin_k), min(geometry.shape[0], k1 + margin_k)),
            (max(0, i0 - margin_px), min(geometry.rows, i1 + margin_px)),
            (max(0, j0 - margin_px), min(geometry.columns, j1 + margin_px)))


def _nodule_sprite(geometry, nodule, box, seed) -> _Sprite:
    rng = np.random.default_rng([seed, 101, nodule.nodule_index])
    ratings = nodule.ratings
    (k0, k1), (i0, i1), (j0, j1) = box
    shape = (k1 - k0, i1 - i0, j1 - j0)
    mask = np.zeros(shape, bool)
    _paste_mask(mask, nodule, (k0, i0, j0))
    spacing = geometry.pixel_spacing
    z = np.asarray(geometry.slice_z)[k0:k1]

    # in-plane signed distance to the mask's edge (mm, > 0 outside), slice by slice like the contours
    signed = np.full(shape, 1e3, np.float32)
    for n in range(shape[0]):
        if mask[n].any():
            outside = ndimage.distance_transform_edt(~mask[n], sampling=spacing)
            inside = ndimage.distance_transform_edt(mask[n], sampling=spacing)
            signed[n] = (outside - inside).astype(np.float32)
    # lobulation: bulge the edge in a few lobes around the centroid
    ci, cj = nodule.centroid_ijk[0] - i0, nodule.centroid_ijk[1] - j0
    ii, jj = np.meshgrid(np.arange(shape[1]), np.arange(shape[2]), indexing="ij")
    angle = np.arctan2(ii - ci, jj - cj)[None]
    lobulation = _rating(ratings, "lobulation")
    if lobulation > 1:
        lobes = rng.integers(3, 6)
        signed = signed - np.float32(0.45 * (lobulation - 1)) * np.cos(lobes * angle + rng.uniform(0, 2 * np.pi)).astype(np.float32)
    blur = np.interp(_rating(ratings, "margin"), [1, 2, 3, 4, 5], MARGIN_BLUR_MM)
    weight = 1.0 / (1.0 + np.exp(np.clip(signed / blur, -50, 50)))
    weight[signed >= 900] = 0.0
    weight = weight.astype(np.float32)
    texture = _rating(ratings, "texture")
    base = float(np.interp(texture, [1, 2, 3, 4, 5], TEXTURE_HU))
    # ground glass is mottled, solid nodules nearly uniform
    mottle = (60.0 - 10.0 * texture) * _smooth_field(ii[None] * spacing, jj[None] * spacing, z[:, None, None], rng, 6, 3.0, 8.0)
    value = (base + mottle).astype(np.float32)
    drawn = mask | (weight > 0.5)

    spicule = _spicules(geometry, nodule, mask, (k0, i0, j0), rng)
    calcified = _calcification(nodule, mask, signed, (k0, i0, j0), rng, spacing)
    in_plane = np.zeros((1, 3, 3), bool)
    in_plane[0] = ndimage.generate_binary_structure(2, 1)
    widen = int(np.ceil(LUNG_AROUND_NODULE_MM / spacing))
    lung = ndimage.binary_dilation(drawn, in_plane, iterations=widen)
    lung = ndimage.binary_dilation(lung, np.ones((3, 1, 1), bool))  # a slice above and below too
    return _Sprite(offset=(k0, i0, j0), label=nodule.nodule_index + 1, weight=weight, value=value, mask=drawn,
                   spicule=spicule, calcified=calcified, lung=lung | (spicule > 0.05))


def _paste_mask(target, nodule, offset):
    shifted = type(nodule.consensus)(mask=nodule.consensus.mask,
                                     offset=tuple(o - b for o, b in zip(nodule.consensus.offset, offset)))
    shifted.paste_into(target, True)


def _rating(ratings, name) -> float:
    return float(np.clip(ratings.get(name, 3.0), 1.0, 5.0))


def _spicules(geometry, nodule, mask, offset, rng) -> np.ndarray:
    """Thin strands from the nodule's surface outward, as many and as long as the spiculation rating says."""
    shape = mask.shape
    strands = np.zeros(shape, np.float32)
    spiculation = _rating(nodule.ratings, "spiculation")
    if spiculation < 2 or not mask.any():
        return strands
    count = int(round(3 + 3 * (spiculation - 2)))
    length_mm = 3.0 + 2.2 * (spiculation - 1)
    spacing = geometry.pixel_spacing
    z = np.asarray(geometry.slice_z)[offset[0]:offset[0] + shape[0]]
    voxels = np.argwhere(mask)
    center = voxels.mean(axis=0)
    center_mm = np.array([np.interp(center[0], np.arange(len(z)), z), center[1] * spacing, center[2] * spacing])
    kk = z[:, None, None]
    ii = (np.arange(shape[1]) * spacing)[None, :, None]
    jj = (np.arange(shape[2]) * spacing)[None, None, :]
    radius_mm = max(np.sqrt(mask.sum(axis=(1, 2)).max() / np.pi) * spacing, 1.5)
    for _ in range(count):
        angle = rng.uniform(0, 2 * np.pi)
        tilt = rng.uniform(-0.35, 0.35)
        direction = np.array([tilt, np.sin(angle), np.cos(angle)])
        direction /= np.linalg.norm(direction)
        start = center_mm + direction * radius_mm * 0.6
        end = start + direction * (radius_mm * 0.4 + length_mm * rng.uniform(0.7, 1.3))
        distance = _segment_distance(kk, ii, jj, start, end)
        width = 0.45 + 0.1 * spiculation
        strands = np.maximum(strands, np.clip(1.5 - distance / width, 0.0, 1.0).astype(np.float32))
    return strands


def _segment_distance(kk, ii, jj, start, end) -> np.ndarray:
    d = end - start
    t = ((kk - start[0]) * d[0] + (ii - start[1]) * d[1] + (jj - start[2]) * d[2]) / float(d @ d)
    t = np.clip(t, 0.0, 1.0)
    return np.sqrt((kk - start[0] - t * d[0]) ** 2 + (ii - start[1] - t * d[1]) ** 2 + (jj - start[2] - t * d[2]) ** 2)


def _calcification(nodule, mask, signed, offset, rng, spacing) -> np.ndarray:
    """A dense core whose pattern follows the calcification rating (6 = none)."""
    kind = int(round(nodule.ratings.get("calcification", 6)))
    calcified = np.zeros(mask.shape, bool)
    if kind >= 6 or not mask.any():
        return calcified
    depth = np.where(mask, -signed, 0.0)  # mm inside the edge
    deepest = depth.max()
    voxels = np.argwhere(mask)
    center = voxels.mean(axis=0)
    kk, ii, jj = np.indices(mask.shape)
    in_plane_mm = np.hypot(ii - center[1], jj - center[2]) * spacing
    if kind == 3:  # solid: nearly all of it
        calcified = depth > 0.25 * deepest
    elif kind == 5:  # central
        calcified = mask & (in_plane_mm < max(0.35 * deepest, 1.2)) & (np.abs(kk - center[0]) <= 1)
    elif kind == 2:  # laminated: a core and a ring
        calcified = mask & ((in_plane_mm < 0.25 * deepest + 0.8) | (np.abs(depth - 0.45 * deepest) < 0.4))
    elif kind == 4:  # non-central: an eccentric blob
        pick = voxels[rng.integers(len(voxels))]
        calcified = mask & (np.hypot(ii - pick[1], jj - pick[2]) * spacing < max(0.3 * deepest, 1.0)) & (np.abs(kk - pick[0]) <= 1)
    else:  # popcorn: several small blobs
        for _ in range(4):
            pick = voxels[rng.integers(len(voxels))]
            calcified |= mask & (np.hypot(ii - pick[1], jj - pick[2]) * spacing < max(0.18 * deepest, 0.8)) & (kk == pick[0])
    if not calcified.any():  # a tiny nodule: at least its deepest voxel
        calcified[tuple(np.unravel_index(np.argmax(depth), depth.shape))] = True
    return calcified
