"""Reading back what ``explain --format dicom`` wrote, with readers other than its writer (highdicom with
pydicom 3, pydicom alone for the headers), for the DICOM and NIfTI tests."""
import subprocess

import numpy as np
import pydicom
import SimpleITK as sitk

TIME_ATTRIBUTES = ("ContentDate", "ContentTime", "SeriesDate", "SeriesTime", "InstanceCreationDate",
                   "InstanceCreationTime")


def dciodvfy_errors(path) -> list[str]:
    """dciodvfy's error lines for the object at ``path`` (its warnings left out)."""
    import shutil
    import sys
    from pathlib import Path

    tool = shutil.which("dciodvfy") or str(Path(sys.executable).parent / "dciodvfy")
    result = subprocess.run([tool, str(path)], capture_output=True, text=True, errors="replace")
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith(("Error", "Abort"))]


def array_affine(image: sitk.Image) -> np.ndarray:
    """The 4 x 4 map of a SimpleITK image's array indices (z, y, x) to LPS millimetres."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = (direction * np.array(image.GetSpacing()))[:, ::-1]
    affine[:3, 3] = image.GetOrigin()
    return affine


def image_on_grid(image: sitk.Image, grid_shape, grid_affine) -> np.ndarray:
    """``image``'s values at the voxels of a grid (``grid_affine``: its indices to LPS mm); the grid's voxels
    must lie on the image's (each at an image voxel, to a hundredth of a voxel), which is what "the same world
    positions" means here."""
    to_image = np.linalg.inv(array_affine(image)) @ np.asarray(grid_affine, float)
    linear, offset = to_image[:3, :3], to_image[:3, 3]
    assert np.allclose(linear, np.round(linear), atol=1e-3), linear
    assert np.allclose(offset, np.round(offset), atol=1e-2), offset
    linear, offset = np.round(linear).astype(int), np.round(offset).astype(int)
    axes = [int(np.flatnonzero(linear[:, r])[0]) for r in range(3)]  # grid axis r runs along image axis axes[r]
    array = sitk.GetArrayFromImage(image)
    index = [linear[axes[r], r] * np.arange(grid_shape[r]) + offset[axes[r]] for r in range(3)]
    for r in range(3):
        assert index[r].min() >= 0 and index[r].max() < array.shape[axes[r]], (r, index[r])
    return np.transpose(array, axes)[np.ix_(*index)]


def source_instances(folder) -> dict[float, str]:
    """The source slices' SOPInstanceUIDs by their position along the (shared) slice normal."""
    instances = {}
    for path in sorted(folder.rglob("*.dcm")):
        header = pydicom.dcmread(path, stop_before_pixels=True)
        orientation = np.array(header.ImageOrientationPatient, float)
        normal = np.cross(orientation[:3], orientation[3:])
        instances[round(float(np.dot(np.array(header.ImagePositionPatient, float), normal)), 3)] = \
            str(header.SOPInstanceUID)
    return instances


def frame_sources(dataset) -> list[tuple[float, list[str]]]:
    """Each frame's position along the slice normal and the source instances its derivation references."""
    orientation = np.array(dataset.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0]
                           .ImageOrientationPatient, float)
    normal = np.cross(orientation[:3], orientation[3:])
    frames = []
    for frame in dataset.PerFrameFunctionalGroupsSequence:
        position = float(np.dot(np.array(frame.PlanePositionSequence[0].ImagePositionPatient, float), normal))
        uids = [str(source.ReferencedSOPInstanceUID) for item in frame.get("DerivationImageSequence", [])
                for source in item.get("SourceImageSequence", [])]
        frames.append((position, uids))
    return frames


def without_times(path):
    """The object at ``path`` less the times it records of its writing, which are all that may differ between
    two runs."""
    dataset = pydicom.dcmread(path)
    for keyword in TIME_ATTRIBUTES:
        if keyword in dataset:
            delattr(dataset, keyword)
    return dataset
