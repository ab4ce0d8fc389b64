"""The file formats ``explain`` writes an explanation in, apart from the writers so that the command line and
the Slicer panel read a choice of formats without importing them (nor torch)."""
from __future__ import annotations

from xaiexplain.errors import XAIExplainError

NRRD, DICOM, NIFTI = "nrrd", "dicom", "nifti"
# NRRD is always written: nodules.json names those files, and the Slicer scenes and archive tables read them;
# DICOM (a Segmentation and a Parametric Map per method) and NIfTI come beside them on request.
OUTPUT_FORMATS = (NRRD, DICOM, NIFTI)


def checked_formats(formats=None) -> tuple[str, ...]:
    """``formats`` (names, or comma-separated lists of names, any case) as the formats to write, NRRD first,
    in OUTPUT_FORMATS' order; an unknown name is refused in one sentence."""
    chosen = {NRRD}
    for text in ([formats] if isinstance(formats, str) else formats or ()):
        for name in (part.strip().lower() for part in str(text).split(",")):
            if name not in OUTPUT_FORMATS:
                raise XAIExplainError(f"{name or 'an empty name'!r} is not an output format: choose from "
                                      f"{', '.join(OUTPUT_FORMATS)} (NRRD is always written)")
            chosen.add(name)
    return tuple(name for name in OUTPUT_FORMATS if name in chosen)
