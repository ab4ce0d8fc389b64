"""Nodule-free lung patches: what a nodule classifier must also call benign.

A classifier trained on nodule patches alone never sees lung without a nodule, and may call empty lung
malignant; then its maps explain nothing, and the flat-lung reference of integrated gradients or the
deletion curves is itself "malignant". So the patch sets hold, beside the nodules, patches of lung away
from every annotation, cut exactly as nodule patches are (64 x 64 pixels over 45 mm, bilinear, axial).

A patch is nodule-free lung when
- its square, widened by ``NODULE_MARGIN_MM``, misses the box of every annotated nodule of its scan (labelled
  or not), in x, y and z;
- it is mostly parenchyma: median between ``LUNG_MEDIAN_HU`` (so neither outside air nor the chest wall),
  95th percentile below ``LUNG_P95_BELOW_HU`` (no nodule and no large vessel).
Centres are drawn at random among the slice's pixels whose value lies in the parenchyma range; a drawn
centre whose patch fails the test is dropped, up to ``attempts`` draws per wanted patch.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import SimpleITK as sitk

from xaiexplain.data.patches import FIELD_OF_VIEW_MM, OUTSIDE_HU, PATCH_SIZE, extract_patch

LUNG_MEDIAN_HU = (-950.0, -750.0)
LUNG_P95_BELOW_HU = -400.0
NODULE_MARGIN_MM = 10.0
CRITERION = (f"no annotated nodule within {NODULE_MARGIN_MM:g} mm of the patch; patch median in "
             f"{LUNG_MEDIAN_HU[0]:g}..{LUNG_MEDIAN_HU[1]:g} HU and 95th percentile below {LUNG_P95_BELOW_HU:g} HU")
# Arrays of a patch set's lung_patches.npz, beside patches.npz (see data.patch_set).
LUNG_PATCH_FILE = "lung_patches.npz"
# Nodule-free lung patches per scan that ``phantom --patches`` and ``dataset`` take unless told otherwise
LUNG_PATCHES_PER_SCAN = 8


def is_nodule_free_lung(patch_hu: np.ndarray) -> bool:
    """Whether a patch's values are those of parenchyma without a nodule or a large vessel."""
    median = float(np.median(patch_hu))
    return LUNG_MEDIAN_HU[0] <= median <= LUNG_MEDIAN_HU[1] and float(np.percentile(patch_hu, 95)) < LUNG_P95_BELOW_HU


def nodule_boxes_lps(nodules, geometry) -> list[tuple[np.ndarray, np.ndarray]]:
    """(low, high) LPS corners of every nodule's consensus box (pylidc indices through ``geometry``)."""
    boxes = []
    for nodule in nodules:
        (i0, i1), (j0, j1), (k0, k1) = nodule.bbox_ijk
        corners = geometry.index_to_lps(np.array([[i0 - 0.5, j0 - 0.5, k0], [i1 - 0.5, j1 - 0.5, k1 - 1]], float))
        boxes.append((corners.min(0), corners.max(0)))
    return boxes


def misses_every_box(centre_lps, boxes, field_of_view_mm: float = FIELD_OF_VIEW_MM, depth_mm: float = 0.0) -> bool:
    """Whether the patch about ``centre_lps`` (a volume ``depth_mm`` deep), widened by NODULE_MARGIN_MM,
    misses every box."""
    half = field_of_view_mm / 2 + NODULE_MARGIN_MM
    reach = np.array([half, half, depth_mm / 2 + NODULE_MARGIN_MM])
    centre = np.asarray(centre_lps, float)
    return all(np.any(centre + reach < low) or np.any(centre - reach > high) for low, high in boxes)


def sample_lung_patches(plane_of: Callable[[int], tuple[sitk.Image, float]], slices: int, boxes, count: int,
                        rng: np.random.Generator, size: int = PATCH_SIZE, field_of_view_mm: float = FIELD_OF_VIEW_MM,
                        attempts: int = 40, cut: Callable[[int, tuple], np.ndarray] | None = None,
                        shape: tuple[int, ...] | None = None, depth_mm: float = 0.0,
                        nodule_free: Callable[[np.ndarray], bool] = is_nodule_free_lung) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``count`` nodule-free lung patches (float32 (N, size, size) HU) and their LPS centres (N, 3).

    ``plane_of(k)``: slice ``k`` of ``slices`` as a 2D image in the world (x, y) and its z. Slices are drawn
    at random, one centre per draw among the slice's lung pixels, at most ``attempts * count`` draws. Other
    patches than the slice's axial one: ``cut(k, centre_lps)`` gives a patch of ``shape`` about the centre (a
    2.5D model's channels, a volume ``depth_mm`` deep), kept when ``nodule_free(patch)``."""
    patches, centres = [], []
    for _ in range(attempts * count):
        if len(patches) == count:
            break
        drawn = int(rng.integers(slices))
        plane, z = plane_of(drawn)
        values = sitk.GetArrayViewFromImage(plane)
        rows, columns = np.nonzero((values >= LUNG_MEDIAN_HU[0]) & (values <= LUNG_MEDIAN_HU[1]))
        if not len(rows):
            continue
        pick = int(rng.integers(len(rows)))
        x, y = plane.TransformContinuousIndexToPhysicalPoint((float(columns[pick]), float(rows[pick])))
        if not misses_every_box((x, y, z), boxes, field_of_view_mm, depth_mm):
            continue
        patch = cut(drawn, (x, y, z)) if cut else extract_patch(plane, (x, y), size, field_of_view_mm,
                                                                sitk.sitkLinear, OUTSIDE_HU)
        if nodule_free(patch):
            patches.append(patch)
            centres.append((x, y, z))
    return (np.asarray(patches, np.float32).reshape(len(patches), *(shape or (size, size))),
            np.asarray(centres, np.float32).reshape(-1, 3))


def axial_planes(image: sitk.Image) -> Callable[[int], tuple[sitk.Image, float]]:
    """``plane_of`` for a 3D axial image (identity direction): its slice k as a 2D image and its z."""
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    if not np.allclose(direction, np.eye(3), atol=1e-3):
        raise ValueError("lung patches are drawn from axial images with identity direction")

    def plane_of(k: int) -> tuple[sitk.Image, float]:
        return image[:, :, k], float(image.TransformIndexToPhysicalPoint((0, 0, k))[2])

    return plane_of


class LungPatchRows:
    """Lung patches assembled scan by scan, as ``lung_patches.npz`` holds them: ``images`` int16 HU (N, size,
    size) (or (N, slices, size, size) for a 2.5D set, (N, D, H, W) for volumes: ``shape``), ``split`` int8 (0 train, 1 validation, 2 test: the patient's split), ``center_lps`` float32 (N, 3),
    ``patient_id`` str (N,)."""

    def __init__(self, size: int = PATCH_SIZE, slices: int = 1, shape: tuple[int, ...] | None = None):
        self.shape = shape or ((size, size) if slices == 1 else (slices, size, size))
        self.parts: dict[str, list] = {"images": [], "split": [], "center_lps": [], "patient_id": []}

    def add(self, patient_id: str, split: int, patches_hu: np.ndarray, centres_lps: np.ndarray) -> None:
        count = len(patches_hu)
        self.parts["images"].append(np.clip(np.round(patches_hu), -1024, 3071).astype(np.int16))
        self.parts["split"].append(np.full(count, split, np.int8))
        self.parts["center_lps"].append(np.asarray(centres_lps, np.float32).reshape(count, 3))
        self.parts["patient_id"].append(np.full(count, patient_id, dtype=f"<U{max(len(patient_id), 1)}"))

    def arrays(self) -> dict[str, np.ndarray]:
        if not self.parts["images"]:
            return {"images": np.zeros((0, *self.shape), np.int16), "split": np.zeros(0, np.int8),
                    "center_lps": np.zeros((0, 3), np.float32), "patient_id": np.zeros(0, "<U1")}
        return {name: np.concatenate(parts) for name, parts in self.parts.items()}

    def counts(self, splits) -> dict[str, int]:
        split = np.concatenate(self.parts["split"]) if self.parts["split"] else np.zeros(0, np.int8)
        return {name: int((split == n).sum()) for n, name in enumerate(splits)}
