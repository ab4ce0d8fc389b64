"""Axial nodule patches (paper 1, 3.1): 64 x 64 pixels covering 45 x 45 mm around a point, bilinear,
one per image slice through the nodule, and the way back from patch pixels to the image's voxels.

A patch lies in the world (LPS) axial plane whatever the image's direction matrix: rows run along +y
(anterior to posterior), columns along +x (right to left), which is how an axial CT slice is shown.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from xaiexplain.errors import XAIExplainError

PATCH_SIZE = 64
FIELD_OF_VIEW_MM = 45.0
# Value for patch pixels outside the image: air.
OUTSIDE_HU = -1024.0
# Default half height (mm) of the slab of slices taken around a point that comes with no nodule extent.
DEFAULT_HALF_HEIGHT_MM = 5.0


class PatchError(XAIExplainError):
    """A patch that cannot be taken (e.g. a point outside the image); the message is one sentence."""


@dataclass
class PatchStack:
    """Patches through one nodule and where each of them lies in the world.

    ``patches[n]`` is centred at ``centers_lps[n]``; its pixel (row r, column c) lies at
    ``centers_lps[n] + ((c - (size - 1) / 2) * pixel_mm, (r - (size - 1) / 2) * pixel_mm, 0)``.
    ``slab_mm[n]`` is the z extent the patch stands for when its values go back into an image."""

    patches: np.ndarray  # float32 (N, size, size)
    centers_lps: np.ndarray  # (N, 3)
    slab_mm: np.ndarray  # (N,)
    size: int = PATCH_SIZE
    field_of_view_mm: float = FIELD_OF_VIEW_MM
    # for a model that reads S neighbouring slices as channels (2.5D): its input (N, S, size, size), centred on
    # each patch's slice (the series' own neighbours, the edge slice repeated beyond the series), and which of
    # this stack's patches each channel's slice is (N, S; -1 for a slice outside the stack)
    channels: np.ndarray | None = None
    channel_slices: np.ndarray | None = None

    @property
    def network_patches(self) -> np.ndarray:
        """What the model reads: ``channels`` for a 2.5D model, else ``patches``."""
        return self.patches if self.channels is None else self.channels

    def maps_on_slices(self, maps: np.ndarray) -> np.ndarray:
        """The model's maps of ``network_patches`` -> (N, size, size) on this stack's slices. A 2.5D model's
        per-channel maps (N, S, size, size): each channel's map on the slice it was read from, averaged where
        several land on one; channels read from a slice outside the stack are left out. Maps without
        channels (a 2.5D model's Grad-CAM) stay on their patch's slice."""
        if self.channel_slices is None or maps.ndim == 3:
            return maps
        total = np.zeros((len(self.patches),) + maps.shape[2:], np.float64)
        count = np.zeros(len(self.patches))
        for n, slices in enumerate(self.channel_slices):
            for j, m in enumerate(slices):
                if m >= 0:
                    total[m] += maps[n, j]
                    count[m] += 1
        return (total / np.maximum(count, 1)[:, None, None]).astype(np.float32)

    @property
    def pixel_mm(self) -> float:
        return self.field_of_view_mm / self.size

    def images(self, values: np.ndarray) -> list[sitk.Image]:
        """``values`` (the shape of ``patches``) as images in the world, the way back into a series."""
        return [self.slab_image(n, values[n]) for n in range(len(self.patches))]

    def slab_image(self, n: int, values: np.ndarray | None = None) -> sitk.Image:
        """Patch ``n`` (or ``values`` on its grid) as a one-slice SimpleITK image whose slice is as thick
        as its slab: ITK's interpolators reach half a voxel beyond the centres, so the image covers
        exactly the patch's 45 x 45 mm square and its slab."""
        array = np.asarray(self.patches[n] if values is None else values, dtype=np.float32)
        image = sitk.GetImageFromArray(array[None])
        _set_plane_geometry(image, self.centers_lps[n], self.size, self.pixel_mm, self.slab_mm[n])
        return image


@dataclass
class VolumePatch(PatchStack):
    """A 3D patch (a model's ``spatial_dims`` 3 input): ``patches`` are its D axial planes (D, size, size),
    plane n centred at ``centers_lps[n]``, ``slab_mm`` the spacing of its planes; the model reads the whole
    volume, and its maps go back into a series by trilinear resampling of the volume (not plane by plane)."""

    @property
    def network_patches(self) -> np.ndarray:
        return self.patches[None]

    def maps_on_slices(self, maps: np.ndarray) -> np.ndarray:
        """The map (1, D, size, size) of the volume -> (D, size, size), one per plane."""
        return maps[0]

    def images(self, values: np.ndarray) -> list[sitk.Image]:
        """``values`` (D, size, size) as one 3D image whose voxels are the volume's: ITK's interpolators reach
        half a voxel beyond the centres, so it covers exactly the volume's box."""
        image = sitk.GetImageFromArray(np.asarray(values, np.float32))
        image.SetSpacing((self.pixel_mm, self.pixel_mm, float(self.slab_mm[0])))
        image.SetOrigin([float(c) for c in self.centers_lps[0] - np.array([1, 1, 0]) * (self.size - 1) / 2
                         * self.pixel_mm])
        return [image]


def extract_volume(image: sitk.Image, center_lps, size: tuple[int, int, int],
                   field_of_view_mm: tuple[float, float, float], interpolator=sitk.sitkLinear,
                   outside_value: float = OUTSIDE_HU) -> VolumePatch:
    """The 3D patch of ``image`` centred at the LPS point: ``size`` (depth, rows, columns) voxels across
    ``field_of_view_mm`` along world z, y and x, trilinear (``sitk.sitkNearestNeighbor`` for label images),
    air outside the image."""
    check_point_inside(image, center_lps)
    if size[1] != size[2] or field_of_view_mm[1] != field_of_view_mm[2]:
        raise PatchError("a volume's rows and columns must have one size and one field of view")
    spacing = np.asarray(field_of_view_mm, float)[::-1] / np.asarray(size, float)[::-1]  # x, y, z
    center = np.asarray(center_lps, float)
    grid = sitk.Image([int(v) for v in size[::-1]], sitk.sitkFloat32)
    grid.SetSpacing(spacing.tolist())
    grid.SetOrigin((center - (np.asarray(size[::-1]) - 1) / 2 * spacing).tolist())
    values = sitk.GetArrayFromImage(sitk.Resample(image, grid, sitk.Transform(), interpolator,
                                                  float(outside_value), sitk.sitkFloat32))
    depth = size[0]
    centers = np.repeat(center[None], depth, axis=0)
    centers[:, 2] = center[2] + (np.arange(depth) - (depth - 1) / 2) * spacing[2]
    return VolumePatch(patches=values, centers_lps=centers, slab_mm=np.full(depth, spacing[2]), size=int(size[1]),
                       field_of_view_mm=float(field_of_view_mm[1]))


def patch_grid(center, size: int = PATCH_SIZE, field_of_view_mm: float = FIELD_OF_VIEW_MM) -> sitk.Image:
    """An empty image whose voxels are the pixels of the patch centred at ``center``: one slice for an
    LPS point (x, y, z), a 2D grid for an in-plane point (x, y)."""
    grid = sitk.Image([size, size, 1][:len(center)], sitk.sitkFloat32)
    _set_plane_geometry(grid, center, size, field_of_view_mm / size, 1.0)
    return grid


def _set_plane_geometry(image: sitk.Image, center, size: int, pixel_mm: float, slab_mm: float) -> None:
    dimension = len(center)
    half = (size - 1) / 2 * pixel_mm
    origin = [float(center[0]) - half, float(center[1]) - half, float(center[-1])]
    image.SetSpacing((pixel_mm, pixel_mm, float(slab_mm))[:dimension])
    image.SetOrigin(origin[:dimension])
    image.SetDirection(np.eye(dimension).ravel().tolist())


def extract_patch(image: sitk.Image, center, size: int = PATCH_SIZE, field_of_view_mm: float = FIELD_OF_VIEW_MM,
                  interpolator=sitk.sitkLinear, outside_value: float = OUTSIDE_HU) -> np.ndarray:
    """The axial patch (size x size float32, bilinear by default) of ``image`` centred at ``center``.

    ``image`` is a 3D image and ``center`` an LPS point, or ``image`` is one axial slice as a 2D image
    and ``center`` its in-plane (x, y); use ``sitk.sitkNearestNeighbor`` for label images."""
    check_point_inside(image, center)
    return _resample_plane(image, center, size, field_of_view_mm, interpolator, outside_value)


def _resample_plane(image, center, size, field_of_view_mm, interpolator=sitk.sitkLinear,
                    outside_value=OUTSIDE_HU) -> np.ndarray:
    # Linear interpolation in 3D; at a slice position of an axial image it is bilinear in-plane.
    resampled = sitk.Resample(image, patch_grid(center, size, field_of_view_mm), sitk.Transform(),
                              interpolator, float(outside_value), sitk.sitkFloat32)
    return sitk.GetArrayFromImage(resampled).reshape(size, size)


def slice_positions(image: sitk.Image, center_lps, z_min: float, z_max: float) -> np.ndarray:
    """World z of the image's slices through ``center_lps`` that lie within [z_min, z_max] (mm).

    The slices are those of the image axis closest to world z; for an oblique image the positions are
    where that axis, through the point's voxel, crosses each slice."""
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    axis = int(np.argmax(np.abs(direction[2])))  # image axis most aligned with world z
    index = np.asarray(image.TransformPhysicalPointToContinuousIndex([float(c) for c in center_lps]))
    positions = []
    for k in range(image.GetSize()[axis]):
        index[axis] = k
        z = image.TransformContinuousIndexToPhysicalPoint(index.tolist())[2]
        if z_min - 1e-3 <= z <= z_max + 1e-3:
            positions.append(z)
    return np.sort(np.asarray(positions, dtype=float))


def extract_stack(image: sitk.Image, center_lps, z_range: tuple[float, float] | None = None,
                  size: int = PATCH_SIZE, field_of_view_mm: float = FIELD_OF_VIEW_MM, slices: int = 1) -> PatchStack:
    """Axial patches centred on the point's x, y at every image slice within ``z_range`` (LPS mm).

    Without ``z_range`` the slab is the point's z +/- ``DEFAULT_HALF_HEIGHT_MM``; the slice nearest to
    the point is always included. ``slices`` > 1 (odd): also the 2.5D input of each patch, the image's
    neighbouring slices as channels (``PatchStack.channels``)."""
    check_point_inside(image, center_lps)
    center = np.asarray(center_lps, dtype=float)
    if z_range is None:
        z_range = (center[2] - DEFAULT_HALF_HEIGHT_MM, center[2] + DEFAULT_HALF_HEIGHT_MM)
    z_positions = slice_positions(image, center, *z_range)
    if len(z_positions) == 0:
        nearest = slice_positions(image, center, -np.inf, np.inf)
        z_positions = nearest[[np.argmin(np.abs(nearest - center[2]))]]
    centers = np.repeat(center[None], len(z_positions), axis=0)
    centers[:, 2] = z_positions
    patches = np.stack([_resample_plane(image, c, size, field_of_view_mm) for c in centers])
    stack = PatchStack(patches=patches, centers_lps=centers, slab_mm=_slab_heights(z_positions, image),
                       size=size, field_of_view_mm=field_of_view_mm)
    if slices > 1:
        stack.channels, stack.channel_slices = _neighbour_channels(image, center, z_positions, slices, size,
                                                                   field_of_view_mm)
    return stack


def _neighbour_channels(image, center, z_positions, slices, size, field_of_view_mm):
    """(N, S, size, size) planes at each position's neighbouring image slices, and each one's patch index."""
    every = slice_positions(image, center, -np.inf, np.inf)
    half = slices // 2
    channels = np.empty((len(z_positions), slices, size, size), np.float32)
    patch_of = np.full((len(z_positions), slices), -1, int)
    for n, z in enumerate(z_positions):
        k = int(np.argmin(np.abs(every - z)))
        for j in range(slices):
            neighbour = every[int(np.clip(k + j - half, 0, len(every) - 1))]
            channels[n, j] = _resample_plane(image, (center[0], center[1], neighbour), size, field_of_view_mm)
            matches = np.flatnonzero(np.abs(z_positions - neighbour) < 1e-3)
            patch_of[n, j] = int(matches[0]) if len(matches) else -1
    return channels, patch_of


def _slab_heights(z_positions: np.ndarray, image: sitk.Image) -> np.ndarray:
    """Each patch stands for the z extent half-way to its neighbours (one slice step at the ends)."""
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    axis = int(np.argmax(np.abs(direction[2])))
    step = abs(direction[2, axis] * image.GetSpacing()[axis])
    if len(z_positions) == 1:
        return np.array([step])
    edges = np.concatenate([[z_positions[0] - step / 2], (z_positions[1:] + z_positions[:-1]) / 2,
                            [z_positions[-1] + step / 2]])
    return np.diff(edges)


def check_point_inside(image: sitk.Image, point_lps) -> None:
    """PatchError unless the LPS point is finite and inside the image's voxel extent."""
    if len(point_lps) != image.GetDimension() or not np.isfinite(np.asarray(point_lps, dtype=float)).all():
        shown = ", ".join(f"{float(c):g}" for c in np.ravel(np.asarray(point_lps, dtype=float)))
        raise PatchError(f"the point ({shown}) is not {image.GetDimension()} finite LPS millimetres")
    index = np.asarray(image.TransformPhysicalPointToContinuousIndex([float(c) for c in point_lps]))
    size = np.asarray(image.GetSize())
    if np.any(index < -0.5) or np.any(index > size - 0.5):
        lo = image.TransformContinuousIndexToPhysicalPoint([-0.5] * len(size))
        hi = image.TransformContinuousIndexToPhysicalPoint((size - 0.5).tolist())
        box = ", ".join(f"{min(a, b):.1f}..{max(a, b):.1f}" for a, b in zip(lo, hi))
        point = ", ".join(f"{c:.1f}" for c in point_lps)
        raise PatchError(f"the point ({point}) mm lies outside the image, whose LPS extent is ({box}) mm")


def backproject(stacks: list[PatchStack], values: list[np.ndarray], reference: sitk.Image,
                background: float = 0.0) -> sitk.Image:
    """Put patch values back into the voxels of ``reference`` (float32, its exact geometry).

    ``values[s]`` has the shape of ``stacks[s].patches``. Each patch covers its 45 x 45 mm square and
    its slab (a volume its box, resampled trilinearly); where patches overlap their values are averaged;
    voxels no patch covers get ``background``."""
    shape = reference.GetSize()[::-1]
    total = np.zeros(shape, np.float64)
    weight = np.zeros(shape, np.float64)
    for stack, stack_values in zip(stacks, values):
        if stack_values.shape != stack.patches.shape:
            raise ValueError(f"values of shape {stack_values.shape} for patches of shape {stack.patches.shape}")
        for slab in stack.images(stack_values):
            region = covered_region(slab, reference)
            if region is None:
                continue
            start, size = region
            target = sitk.Image(size, sitk.sitkFloat32)
            target.SetSpacing(reference.GetSpacing())
            target.SetDirection(reference.GetDirection())
            target.SetOrigin(reference.TransformIndexToPhysicalPoint(start))
            ones = sitk.Image(slab.GetSize(), sitk.sitkFloat32) + 1.0
            ones.CopyInformation(slab)
            resampled = sitk.GetArrayFromImage(
                sitk.Resample(slab, target, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32))
            covered = sitk.GetArrayFromImage(
                sitk.Resample(ones, target, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32))
            box = tuple(slice(s, s + n_) for s, n_ in zip(start[::-1], size[::-1]))
            total[box] += resampled
            weight[box] += covered
    out = np.full(shape, background, np.float32)
    np.divide(total, weight, out=out, where=weight > 0, casting="unsafe")
    image = sitk.GetImageFromArray(out)
    image.CopyInformation(reference)
    return image


def covered_region(slab: sitk.Image, reference: sitk.Image):
    """Index start and size of the part of ``reference`` that the slab can reach, or None."""
    size = np.asarray(slab.GetSize())
    corners = [slab.TransformContinuousIndexToPhysicalPoint([float(c) for c in corner])
               for corner in np.array(np.meshgrid(*[[-0.5, s - 0.5] for s in size])).T.reshape(-1, 3)]
    indices = np.array([reference.TransformPhysicalPointToContinuousIndex(c) for c in corners])
    lo = np.maximum(np.floor(indices.min(axis=0)).astype(int), 0)
    hi = np.minimum(np.ceil(indices.max(axis=0)).astype(int) + 1, np.asarray(reference.GetSize()))
    if np.any(hi <= lo):
        return None
    return [int(v) for v in lo], [int(v) for v in hi - lo]
