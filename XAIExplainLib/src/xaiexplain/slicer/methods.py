"""The methods as the module panel and Slicer's own process know them, without torch: a table written from
the method registry (``methods.json`` beside this file: per method its name, kind, one-line summary,
reference and options with their types and ranges). Slicer's process lists the methods, checks a request
(with ``explainers.option_values``, as the registry checks it) and colours the results
from it; only the worker process imports the registry, and with it torch and captum. A test keeps the table
in step with the registry; after changing a method, write it again with

    python -m xaiexplain.slicer.methods
"""
from __future__ import annotations

import json
from pathlib import Path

from xaiexplain.errors import XAIExplainError

TABLE = Path(__file__).with_name("methods.json")


def method_table() -> list[dict]:
    """Every method's record, in the registry's order (``available_methods``)."""
    return json.loads(TABLE.read_text(encoding="utf-8"))


def method_names() -> list[str]:
    return [record["name"] for record in method_table()]


def method_record(name: str) -> dict:
    """The record of a method name; an unknown name is refused as the registry refuses it."""
    records = {record["name"]: record for record in method_table()}
    if name not in records:
        raise XAIExplainError(f"unknown method {name!r}; choose one of {', '.join(records)}")
    return records[name]


def map_kind(name: str):
    """The kind of a method's maps (``explainers.kinds.Kind``)."""
    from xaiexplain.explainers.kinds import KINDS

    return KINDS[method_record(name)["kind"]]


def check_methods_and_options(methods, options) -> dict:
    """``options`` read by their types and ranges (``option_values.parse_option``); an unknown method, an
    option none of ``methods`` takes or a value not of its type or range is refused with one sentence, as the
    worker's ``explainers.on_patches.parse_options`` refuses it, before anything is written for it."""
    from xaiexplain.explainers.option_values import parse_option

    records = [method_record(method) for method in methods]
    parsed = {}
    for name, value in options.items():
        specs = [record["options"][name] for record in records if name in record["options"]]
        if not specs:
            raise XAIExplainError(f"none of the methods {', '.join(methods)} takes the option {name!r}")
        parsed[name] = parse_option(name, value, specs[0])
    return parsed


def refused_methods(bundle) -> dict[str, str]:
    """The methods a classifier bundle cannot serve, each with its reason, from what ``xaiexplain bundle``
    recorded in its ``config.json`` (``check.methods``), without torch: for the panel's method list. A shipped
    name, no bundle or a bundle without that record: none. ``iterative:<m>`` is refused as ``<m>`` is."""
    path = Path(bundle) / "config.json" if bundle else None
    if path is None or not path.is_file():
        return {}
    try:
        checked = json.loads(path.read_text(encoding="utf-8")).get("check", {}).get("methods", {})
    except (OSError, ValueError, AttributeError):
        return {}  # the worker refuses a damaged bundle in one sentence
    if not isinstance(checked, dict):
        return {}
    refused = {}
    for name in method_names():
        reason = checked.get(name.removeprefix("iterative:"))
        if isinstance(reason, str) and reason:
            refused[name] = reason
    return refused


def table_from_registry() -> list[dict]:
    """The table as the registry says it is now (imports torch)."""
    from xaiexplain.explainers import registry

    return [{"name": name, "kind": record.kind, "summary": record.summary, "reference": record.reference,
             "options": record.option_specs}
            for name, record in ((name, registry.get(name)) for name in registry.available_methods())]


def write_method_table(path: Path = TABLE) -> Path:
    path.write_text(json.dumps(table_from_registry(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


if __name__ == "__main__":
    print(write_method_table())
