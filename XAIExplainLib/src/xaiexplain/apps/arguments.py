"""Readers of command-line values: each gives the value or one sentence (argparse's error), never a trace."""
from __future__ import annotations

import argparse
import math


def parse_point(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"'{text}' is not a point: give three finite LPS millimetres as X,Y,Z")
    return values


def parse_option(text: str) -> tuple[str, str]:
    """NAME=VALUE; the value stays text until the methods that take the option read it by its type
    (``explain_options``)."""
    name, equals, value = text.partition("=")
    if not equals or not name:
        raise argparse.ArgumentTypeError(f"'{text}' is not an option: give NAME=VALUE")
    return name, value


def non_empty(text: str) -> str:
    """A bundle or layer name: an empty one (an unset shell variable) is refused, not taken as the default."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty name was given (is a shell variable unset?)")
    return text


def positive_pixels(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 2048:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number of pixels from 1 to 2048")
    return int(text)


def positive_millimetres(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"'{text}' is not a positive number of millimetres")
    return value


def per_axis(parse):
    """One value, or three separated by commas (a volume's depth, rows, columns), each read by ``parse``."""
    def parse_axes(text: str):
        parts = text.split(",")
        if len(parts) not in (1, 3):
            raise argparse.ArgumentTypeError(f"'{text}' is not one value or three (depth,rows,columns)")
        values = [parse(part) for part in parts]
        return values[0] if len(values) == 1 else values

    return parse_axes


def output_formats(text: str) -> tuple[str, ...]:
    """``--format``: one or more of nrrd, dicom, nifti, separated by commas (NRRD is always written)."""
    from xaiexplain.errors import XAIExplainError
    from xaiexplain.io.output_formats import checked_formats

    try:
        return checked_formats(text)
    except XAIExplainError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
