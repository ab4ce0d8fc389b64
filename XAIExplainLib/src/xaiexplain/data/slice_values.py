"""A slice's values and what a message says of them: the one-line error of a series (``SeriesError``, header
text and file names escaped and shortened), the pixels of one slice file in HU, and whether a series' values
are plausible CT numbers of a chest. ``data.series`` reads series with them; ``dataset`` checks with them too.
"""
from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from xaiexplain.errors import XAIExplainError

# Bounds of the messages: characters of one header value or file name.
SHOWN_TEXT = 32
SHOWN_PATH = 160


class SeriesError(XAIExplainError):
    """A series that cannot be read; the message is one sentence naming the folder and the cause."""


def shown_text(value, limit: int = SHOWN_TEXT) -> str:
    """``value`` as text fit for a one-line message: control and other unprintable characters escaped
    (a byte of an undecodable file name as \\xff), at most ``limit`` characters (the middle elided)."""
    escaped = []  # one piece per character, so that shortening never cuts an escape in two
    for character in str(value):
        if character.isprintable():
            escaped.append(character)
        elif "\udc80" <= character <= "\udcff":  # a byte that was not UTF-8 (os.fsdecode's surrogateescape)
            escaped.append(f"\\x{ord(character) - 0xDC00:02x}")
        else:
            escaped.append(character.encode("unicode_escape").decode("ascii"))
    if sum(map(len, escaped)) <= limit:
        return "".join(escaped)
    head, tail, budget = [], [], limit - 3
    while escaped and len(escaped[0]) <= budget // 2 - sum(map(len, head)):
        head.append(escaped.pop(0))
    while escaped and len(escaped[-1]) <= budget - sum(map(len, head)) - sum(map(len, tail)):
        tail.insert(0, escaped.pop())
    return "".join(head) + "..." + "".join(tail)


def shown_path(path) -> str:
    return shown_text(path, SHOWN_PATH)


# A chest CT in Hounsfield units has air around the body and in the lungs: a large share of its voxels lie
# between these values (the lower bound leaves out a padding of -1024). Values that are not HU (stored as
# HU + 1024 with RescaleIntercept 0, say) have next to none there.
AIR_AND_LUNG_HU = (-1010.0, -500.0)
LEAST_AIR_AND_LUNG = 0.01
SAMPLED_VOXELS = 1_000_000


class ImplausibleCTNumbers(SeriesError):
    """Pixel values that are not plausible Hounsfield units of a chest (allow_implausible_hu uses them)."""


def check_ct_numbers(folder, values, allow_implausible_hu: bool = False) -> bool:
    """Whether ``values`` (a series' pixels after its rescale) are plausible CT numbers of a chest: at least
    LEAST_AIR_AND_LUNG of them air or lung. Implausible values raise ImplausibleCTNumbers naming the evidence,
    unless ``allow_implausible_hu``; then the answer is False."""
    values = np.ravel(values)
    sample = values[::max(1, values.size // SAMPLED_VOXELS)]
    lowest, highest = AIR_AND_LUNG_HU
    air_and_lung = float(np.mean((sample > lowest) & (sample < highest)))
    if air_and_lung >= LEAST_AIR_AND_LUNG:
        return True
    if not allow_implausible_hu:
        raise ImplausibleCTNumbers(
            f"{shown_path(folder)} does not hold plausible CT numbers of a chest: {air_and_lung:.1%} of its voxels "
            f"are air or lung ({lowest:g} to {highest:g} HU), where a chest CT in Hounsfield units has a large "
            f"share, and their median is {float(np.median(sample)):.0f} HU, as in a series stored as HU + 1024 with "
            "RescaleIntercept 0; pass --allow-implausible-hu (allow_implausible_hu=True in Python) to use them as "
            "they are")
    return False


def _simpleitk_can_name(path: Path) -> bool:
    """Whether SimpleITK can be given ``path``: a name that is not UTF-8 (bytes kept by os.fsdecode as
    surrogates) makes its C++ string conversion throw, which aborts the whole interpreter."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def read_plane(folder, path, rows: int, columns: int) -> np.ndarray:
    """The pixels of one slice file in HU (its own rescale slope and intercept, applied by GDCM), float32
    (rows, columns); SeriesError for pixels that cannot be decoded or are not one slice of that size."""
    folder, path = Path(folder), Path(path)
    with contextlib.ExitStack() as stack:
        readable = path
        if not _simpleitk_can_name(path):
            # Read a copy under a plain name (a copy, not a hard link: the input's inode stays untouched).
            scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="xaiexplain-slice-")))
            if not _simpleitk_can_name(scratch):
                raise SeriesError(f"the temporary folder {shown_path(scratch)} has a name that is not "
                                  "UTF-8, so slices with such names cannot be read")
            readable = scratch / "slice.dcm"
            try:
                shutil.copyfile(path, readable)
            except OSError as error:
                raise SeriesError(f"{shown_path(path)} in {shown_path(folder)} cannot be copied to be read "
                                  f"({shown_text(error.strerror or type(error).__name__, 60)})") from None
        try:
            plane = sitk.ReadImage(str(readable), sitk.sitkFloat32)
        except RuntimeError:
            raise SeriesError(f"the pixel data of {shown_path(path)} in {shown_path(folder)} cannot be "
                              "decoded") from None
    size = plane.GetSize()
    if len(size) > 2 and size[2] != 1:
        raise SeriesError(f"{shown_path(path)} in {shown_path(folder)} is a multi-frame image ({size[2]} frames), "
                          "not one slice of a series")
    if size[:2] != (columns, rows):
        raise SeriesError(f"{shown_path(folder)} mixes slice sizes ({shown_path(path)} holds {size[1]} x {size[0]} "
                          f"pixels where its header and the other slices say {rows} x {columns}), which is not one "
                          "volume")
    return sitk.GetArrayViewFromImage(plane).reshape(rows, columns).copy()
