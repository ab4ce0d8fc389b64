"""Explaining a classifier's decisions on patches, with any method of the registry."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from xaiexplain.errors import XAIExplainError
from xaiexplain.explainers import registry
from xaiexplain.models.bundles import load_bundle, shown_name


def explain(bundle, patches_hu: np.ndarray, method: str, return_details: bool = False, cycle_am=None, **options):
    """Relevance maps of a classifier's decision on nodule patches.

    Parameters
    ----------
    bundle : Bundle, str or path
        A classifier bundle, or the name of a shipped one / a bundle folder for ``load_bundle``.
    patches_hu : array (N, H, W), (N, S, H, W) for a model that reads S neighbouring slices, or (N, D, H, W)
        volumes for a 3D model
        Patches in Hounsfield units of the model's input spec (``bundle.patch_shape``), as
        ``xaiexplain.data.patches.extract_stack`` takes them.
    method : str
        A name from ``available_methods()``, e.g. ``"lrp"`` or ``"iterative:grad-cam"``.
    return_details : bool
        Also return the method's details: the ``IterativeResult`` (every pass) of ``iterative:<m>``, the
        ``Counterfactuals`` of ``cycle-am``; None for the others.
    cycle_am : Bundle, str or path, optional
        The cycle-am bundle of ``cycle-am`` (the ``generators`` option; default the shipped one). It must
        have been trained against ``bundle`` (``allow_other_classifier=True`` overrides the check).
    **options
        The method's options, as its registry record declares them (``registry.get(method).defaults``),
        e.g. ``layer="block2"`` for Grad-CAM or ``steps=100`` for integrated gradients. An option the
        method does not take raises XAIExplainError.

    Returns
    -------
    maps : array (N, H, W) float32 (a 2.5D model's gradient maps: (N, S, H, W), one per channel; volumes:
        (N, D, H, W))
        In the meaning of the method's kind (``registry.get(method).kind``): evidence > 0 speaks for
        malignant, < 0 for benign; a sensitivity is unsigned; cycle-am's change is G+(x) - G-(x) in HU.
    details : object, only with ``return_details``

    Examples
    --------
    >>> import numpy as np, xaiexplain
    >>> patches = np.full((2, 64, 64), -850.0, np.float32)
    >>> xaiexplain.explain("demo-classifier", patches, "grad-cam", layer="block2").shape
    (2, 64, 64)
    """
    record = registry.get(method)
    if cycle_am is not None:
        options = {**options, "generators": cycle_am}
    bundle = load_bundle(bundle)
    settings = record.prepared(bundle, options)
    patches_hu = np.asarray(patches_hu, np.float32)
    shape = bundle.patch_shape
    if patches_hu.ndim != len(shape) + 1:
        axes = "HW" if len(shape) == 2 else "DHW" if bundle.input.spatial_dims == 3 else "SHW"
        raise XAIExplainError(f"patches must be (N, {', '.join(axes)}), not of shape "
                              f"{patches_hu.shape}")
    if not np.isfinite(patches_hu).all():
        raise XAIExplainError("the patches hold NaN or infinite values")
    if patches_hu.shape[1:] != shape:
        raise XAIExplainError(f"the classifier {shown_name(bundle.path)} reads patches of {' x '.join(map(str, shape))}"
                              f" px, not {' x '.join(map(str, patches_hu.shape[1:]))}")
    maps, details = record.compute(bundle, patches_hu, settings)
    maps = record.map_kind.present(maps)  # e.g. a sensitivity's magnitude
    return (maps, details) if return_details else maps


def split_options(methods, options: Mapping[str, Any]) -> dict[str, dict]:
    """Each method's share of options given for several methods at once, each value read by its type and
    range (``registry.parse_option``): an option goes to the methods that take it, and one that none of
    them takes, or a value that is not of its type or out of range, is refused with one sentence."""
    records = [registry.get(method) for method in methods]
    for name in options:
        if not any(name in record.defaults for record in records):
            raise XAIExplainError(f"none of the methods {', '.join(methods)} takes the option {name!r}")
    return {record.name: record.checked({key: value for key, value in options.items() if key in record.defaults})
            for record in records}


def parse_options(methods, options: Mapping[str, Any]) -> dict:
    """``options`` given for several methods, each value read as the methods that take it read it
    (``split_options``): text from a command line becomes the number or boolean it says."""
    shares = split_options(methods, options)
    return {name: next(share[name] for share in shares.values() if name in share) for name in options}


def prepare_methods(bundle, methods, options: Mapping[str, Any]) -> dict[str, dict]:
    """``split_options``, each method's share resolved and checked for the classifier ``bundle`` before
    anything is computed (e.g. cycle-am's generators loaded once, and refused unless trained against it)."""
    options_of = split_options(methods, options)
    return {name: registry.get(name).prepared(bundle, given) for name, given in options_of.items()}
