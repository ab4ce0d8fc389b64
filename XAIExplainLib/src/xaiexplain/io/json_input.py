"""Reading JSON that a user hands us (a bundle's config.json, a worker's request, a manifest read back):
strict JSON within bounds, or one sentence.

Python's parser recurses once per nesting level and accepts NaN and Infinity, which JSON does not have: a
file nested 100 000 levels deep ended in a RecursionError, and a NaN reached the numbers. What we write
is a few levels deep (``files.json_text``), so a deeper or larger file is not ours.
"""
from __future__ import annotations

import json
from pathlib import Path

from xaiexplain.errors import XAIExplainError

MAX_DEPTH = 64  # nesting levels of arrays and objects
MAX_BYTES = 256 * 2**20


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON value")


def parse_json(text: str, source) -> object:
    """``text`` parsed as strict JSON (no NaN or Infinity) at most MAX_DEPTH levels deep, or an
    XAIExplainError naming ``source`` (what the text is, e.g. its file)."""
    try:
        data = json.loads(text, parse_constant=_refuse_constant)
        too_deep = _depth_over(data, MAX_DEPTH)
    except RecursionError:
        too_deep = True
    except ValueError as error:
        raise XAIExplainError(f"{source} is not valid JSON ({error})") from None
    if too_deep:
        raise XAIExplainError(f"{source} is nested more than {MAX_DEPTH} levels deep, more than any JSON this "
                              "library reads")
    return data


def read_json(path, max_bytes: int = MAX_BYTES) -> object:
    """The JSON file ``path`` as ``parse_json`` reads it, refused in one sentence when over ``max_bytes``
    (before it is read) or not UTF-8 text. A missing file raises FileNotFoundError for the caller to word."""
    path = Path(path)
    size = path.stat().st_size
    if size > max_bytes:
        raise XAIExplainError(f"{path} holds {size} bytes, more than the {max_bytes} a JSON file of this "
                              "library may hold")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise XAIExplainError(f"{path} is not valid JSON (not UTF-8 text)") from None
    return parse_json(text, path)


def _depth_over(data, limit: int) -> bool:
    """Whether arrays and objects in ``data`` nest deeper than ``limit`` (without recursion)."""
    level = [data]
    for _ in range(limit):
        level = [item for value in level if isinstance(value, (list, dict))
                 for item in (value.values() if isinstance(value, dict) else value)]
        if not level:
            return False
    return any(isinstance(value, (list, dict)) for value in level)
