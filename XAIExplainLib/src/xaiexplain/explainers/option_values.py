"""Method options as data, without torch: each option's type comes from its default, numbers may have a
range, and ``parse_option`` reads a value given as a command line's text or from Python by that rule (one
sentence for anything else). The method registry and the Slicer module's torch-free method table
(``xaiexplain.slicer.methods``) both read options with it, so both refuse a value in the same sentence."""
from __future__ import annotations

import math
import numbers
import os
import re
import sys
from typing import Any, Mapping

from xaiexplain.errors import XAIExplainError


def option_specs(defaults: Mapping[str, Any], ranges: Mapping[str, tuple[float, float]]) -> dict[str, dict]:
    """Each option as data: its type, default and, for numbers with one, the range (inclusive)."""
    specs = {}
    for name, default in defaults.items():
        spec = {"type": option_type(default), "default": default}
        if name in ranges:
            spec["minimum"], spec["maximum"] = ranges[name]
        specs[name] = spec
    return specs


def _is_loaded_bundle(value) -> bool:
    """A model bundle object (a cycle-am bundle given as loaded); one exists only where its module, which
    imports torch, has been imported, so nothing is imported here to ask."""
    bundles = sys.modules.get("xaiexplain.models.bundles")
    return bundles is not None and isinstance(value, bundles.Bundle)


OPTION_TYPES = {bool: "boolean", int: "integer", float: "number", str: "name"}
TRUE_WORDS, FALSE_WORDS = ("true", "1", "yes"), ("false", "0", "no")
_WHOLE_NUMBER = re.compile(r"[+-]?[0-9]+")


def option_type(default) -> str:
    """The type of an option, by its default: boolean, integer, number or name."""
    for python_type, name in OPTION_TYPES.items():  # bool before int: True is an int too
        if isinstance(default, python_type):
            return name
    raise ValueError(f"an option's default must be a bool, int, float or str, not {default!r}")


def parse_option(name: str, value, spec: Mapping[str, Any]):
    """The value of option ``name`` read by its ``spec`` (``Method.option_specs``), from the command line's
    text or a Python value; anything else is an XAIExplainError of one sentence. Booleans are read only
    from true/false, 1/0, yes/no; integers only from whole numbers; numbers must be finite and within the
    range; a name is non-empty text (cycle-am's generators also a path or a loaded Bundle)."""
    kind = spec["type"]
    text = value.strip() if isinstance(value, str) else None
    shown = repr(value) if isinstance(value, str) else str(value)
    shown = shown if len(shown) <= 40 else shown[:36] + " ..."
    if kind == "boolean":
        if isinstance(value, bool) or (isinstance(value, numbers.Integral) and value in (0, 1)):
            return bool(value)
        if text is not None and text.lower() in TRUE_WORDS + FALSE_WORDS:
            return text.lower() in TRUE_WORDS
        raise XAIExplainError(f"the option {name} is true or false (true/false, 1/0 or yes/no), not {shown}")
    if kind == "name":
        if text:
            return text
        if isinstance(value, os.PathLike) or _is_loaded_bundle(value):
            return value
        raise XAIExplainError(f"the option {name} is a name, not {shown}")
    number = _number(value, text, whole=kind == "integer")
    lowest, highest = spec.get("minimum", -math.inf), spec.get("maximum", math.inf)
    if number is None or not (math.isfinite(number) and lowest <= number <= highest):
        within = f" from {lowest:g} to {highest:g}" if "minimum" in spec else ""
        raise XAIExplainError(f"the option {name} is {'a whole number' if kind == 'integer' else 'a number'}"
                              f"{within}, not {shown}")
    return number


def _number(value, text: str | None, whole: bool) -> int | float | None:
    """``value`` (or its ``text``) as an int (``whole``: only from a whole number) or a float; None if it
    is not one."""
    if text is not None:
        try:
            if _WHOLE_NUMBER.fullmatch(text):
                return int(text) if whole else float(text)
            return None if whole else float(text)
        except ValueError:  # e.g. more digits than Python converts
            return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral if whole else numbers.Real):
        return None
    return int(value) if whole else float(value)
