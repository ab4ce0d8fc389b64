"""NIfTI copies of an explanation's images (``explain --format nifti``).

SimpleITK (ITK's NIfTI writer) turns the image's LPS geometry into the RAS affine that NIfTI defines
(qform and sform, scanner coordinates, millimetres), so a NIfTI reader finds every voxel at the world point
the NRRD puts it, oblique and anisotropic series included. No other library is needed for it."""
from __future__ import annotations

import SimpleITK as sitk

NIFTI_SUFFIX = ".nii.gz"


def nifti_name(nrrd_name: str) -> str:
    """``relevance_saliency.nrrd`` -> ``relevance_saliency.nii.gz``."""
    return nrrd_name.removesuffix(".nrrd") + NIFTI_SUFFIX


def write_nifti(image: sitk.Image, path) -> None:
    """``image`` (its pixel type kept: float32 relevance, uint8 labels) as gzipped NIfTI-1 at ``path``."""
    sitk.WriteImage(image, str(path), useCompression=True)
