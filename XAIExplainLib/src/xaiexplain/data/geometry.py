"""Geometry of an axial CT scan as LIDC describes it: a 512 x 512 grid per slice and a list of slice z values.

Index conventions follow pylidc: i = row (LPS y grows with i), j = column (LPS x grows with j),
k = slice (LPS z grows with k, ``slice_z`` ascending). Arrays are (z, y, x) = (k, i, j).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

# LIDC scans are axial with identity orientation; the slice z steps may still be irregular.
AXIAL_DIRECTION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
# Tolerance (mm) within which two slice steps count as equal.
Z_STEP_TOLERANCE_MM = 0.01


@dataclass(frozen=True)
class ScanGeometry:
    patient_id: str
    study_instance_uid: str
    series_instance_uid: str
    pixel_spacing: float
    slice_thickness: float
    slice_z: tuple[float, ...]
    rows: int = 512
    columns: int = 512
    # LPS (x, y) in mm of the centre of pixel (row 0, column 0). pylidc does not record the in-plane
    # ImagePositionPatient, so by default the field of view is centred on the scanner axis, as in most
    # LIDC series.
    origin_xy: tuple[float, float] | None = field(default=None)

    def __post_init__(self):
        z = np.asarray(self.slice_z, dtype=float)
        if z.ndim != 1 or len(z) < 2 or np.any(np.diff(z) <= 0):
            raise ValueError("slice_z must hold at least two strictly increasing z values")
        if self.origin_xy is None:
            half_x = (self.columns - 1) * self.pixel_spacing / 2
            half_y = (self.rows - 1) * self.pixel_spacing / 2
            object.__setattr__(self, "origin_xy", (-half_x, -half_y))
        object.__setattr__(self, "slice_z", tuple(float(v) for v in z))

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape (z, y, x)."""
        return (len(self.slice_z), self.rows, self.columns)

    @property
    def slice_spacing(self) -> float:
        """Median distance between neighbouring slices, as pylidc's ``slice_spacing``."""
        return float(np.median(np.diff(self.slice_z)))

    @property
    def is_regular(self) -> bool:
        steps = np.diff(self.slice_z)
        return bool(np.all(np.abs(steps - self.slice_spacing) <= Z_STEP_TOLERANCE_MM))

    def index_to_lps(self, ijk) -> np.ndarray:
        """(..., 3) array of (i, j, k) indices, fractional allowed, to (..., 3) LPS millimetres."""
        ijk = np.asarray(ijk, dtype=float)
        k_axis = np.arange(len(self.slice_z))
        x = self.origin_xy[0] + ijk[..., 1] * self.pixel_spacing
        y = self.origin_xy[1] + ijk[..., 0] * self.pixel_spacing
        z = np.interp(ijk[..., 2], k_axis, self.slice_z)
        return np.stack([x, y, z], axis=-1)

    def lps_to_index(self, lps) -> np.ndarray:
        """(..., 3) LPS millimetres to fractional (i, j, k) indices (inverse of ``index_to_lps``)."""
        lps = np.asarray(lps, dtype=float)
        k_axis = np.arange(len(self.slice_z))
        j = (lps[..., 0] - self.origin_xy[0]) / self.pixel_spacing
        i = (lps[..., 1] - self.origin_xy[1]) / self.pixel_spacing
        k = np.interp(lps[..., 2], self.slice_z, k_axis)
        return np.stack([i, j, k], axis=-1)

    def to_image(self, array: np.ndarray) -> sitk.Image:
        """A SimpleITK image of a (z, y, x) array on this scan's grid.

        An irregular scan is put on the uniform grid ``uniform_slice_positions`` (the grid the series reader
        resamples to), each new slice taking the nearest original slice, so label values stay labels."""
        if array.shape != self.shape:
            raise ValueError(f"array shape {array.shape} does not match the scan's {self.shape}")
        z = uniform_slice_positions(self.slice_z)
        if not self.is_regular:
            nearest = np.abs(np.asarray(self.slice_z)[None, :] - z[:, None]).argmin(axis=1)
            array = array[nearest]
        image = sitk.GetImageFromArray(np.ascontiguousarray(array))
        image.SetSpacing((self.pixel_spacing, self.pixel_spacing, float(z[1] - z[0])))
        image.SetOrigin((self.origin_xy[0], self.origin_xy[1], self.slice_z[0]))
        image.SetDirection(AXIAL_DIRECTION)
        return image

    def to_json(self) -> dict:
        return {
            "patient_id": self.patient_id,
            "study_instance_uid": self.study_instance_uid,
            "series_instance_uid": self.series_instance_uid,
            "pixel_spacing": self.pixel_spacing,
            "slice_thickness": self.slice_thickness,
            "slice_z": list(self.slice_z),
            "rows": self.rows,
            "columns": self.columns,
            "origin_xy": list(self.origin_xy),
        }

    @classmethod
    def from_json(cls, data: dict) -> "ScanGeometry":
        return cls(**{**data, "slice_z": tuple(data["slice_z"]), "origin_xy": tuple(data["origin_xy"])})


def uniform_slice_positions(positions) -> np.ndarray:
    """The uniform grid an irregular stack of slice positions is resampled to: from the first to the last
    position at the median step (regular positions map to themselves)."""
    positions = np.sort(np.asarray(positions, dtype=float))
    step = float(np.median(np.diff(positions)))
    count = int(round((positions[-1] - positions[0]) / step)) + 1
    return positions[0] + step * np.arange(count)
