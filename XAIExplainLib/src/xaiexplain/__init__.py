"""XAIExplain: explanations of medical image classifiers on LIDC-IDRI CT.

Importing this package needs no Slicer, no Qt and no GPU; pylidc and torch are imported only when first
used. The Python API: ``load_bundle``, ``explain``, ``explain_series`` (and ``available_methods``).
"""
__version__ = "0.1.0"

_API = {"load_bundle": "models.bundles", "explain": "explainers.on_patches", "explain_series": "explainers.on_series",
        "available_methods": "explainers.registry"}


def __getattr__(name):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module 'xaiexplain' has no attribute {name!r}")
