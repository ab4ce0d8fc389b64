"""``xaiexplain bundle``: a classifier bundle from a user's model (``xaiexplain.models.sources``), its contract
given by the user, checked before anything is written: the network is built, reads patches of its input
spec and gives one finite decision per patch on flat lung, air and soft tissue, and each method is
tried for what the model allows. The decision threshold is given or chosen on a labelled patch set (the
validation ROC point closest to the top-left corner, as ``xaiexplain-train classifier`` chooses it).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from xaiexplain import __version__
from xaiexplain.errors import XAIExplainError
from xaiexplain.io.files import output_set
from xaiexplain.models import sources
from xaiexplain.models.bundles import FORMAT, FORMAT_VERSION, Bundle, _check_reads_its_patches, _load_weights
from xaiexplain.models.contract import InputSpec, OutputSpec

# Flat patches the check runs the network on (HU): air, lung parenchyma, soft tissue.
CHECK_HU = {"air -1000 HU": -1000.0, "flat lung -850 HU": -850.0, "soft tissue 40 HU": 40.0}
DEFAULT_THRESHOLD = 0.5


def make_bundle(out, *, torchscript=None, python=None, class_name=None, monai=None, arguments=None,
                weights=None, input_spec: dict | None = None, output_spec: dict | None = None,
                layers: dict | None = None, default_layer: str | None = None, threshold: float | None = None,
                threshold_from=None) -> Bundle:
    """A classifier bundle in the folder ``out`` from one model source.

    Parameters
    ----------
    torchscript : path, optional
        A TorchScript file (``torch.jit.save``); copied into the bundle as ``model.pt``.
    python, class_name : path and str, optional
        A Python file and the name of its ``torch.nn.Module`` class; the file is copied into the bundle as
        ``model.py`` with its SHA-256. **This runs the file's code**, now and whenever the bundle is loaded.
    monai : str, optional
        A network of ``monai.networks.nets`` by name (``DenseNet121``, ``EfficientNetBN``, ...).
    arguments : dict, optional
        The constructor arguments of the Python class or MONAI network.
    weights : path
        The network's weights as safetensors (for ``python`` and ``monai``; never a pickle).
    input_spec, output_spec : dict
        The contract (``xaiexplain.models.contract.InputSpec`` / ``OutputSpec`` as JSON).
    layers, default_layer : optional
        Names for layers (name -> module path) and the CAM methods' default layer.
    threshold : float, optional
        The decision threshold on the positive class's probability (default 0.5, or chosen on
        ``threshold_from``, a labelled patch set of the model's input spec).
    """
    given = [name for name, value in (("torchscript", torchscript), ("python", python), ("monai", monai))
             if value is not None]
    if len(given) != 1:
        raise XAIExplainError("give one model source: a TorchScript file, a Python file and class, or a MONAI "
                              "network")
    kind = given[0]
    arguments = dict(arguments or {})
    if kind == "torchscript" and (weights is not None or arguments):
        raise XAIExplainError("a TorchScript file holds its weights and arguments: give neither")
    if kind != "torchscript" and weights is None:
        raise XAIExplainError(f"{sources.SOURCES[kind]} needs its weights as a safetensors file")
    if kind == "python" and not class_name:
        raise XAIExplainError("a Python file needs the name of its model class")
    for file in (torchscript, python, weights):
        if file is not None and not Path(file).is_file():
            raise XAIExplainError(f"no file {file}")
    spec = InputSpec.from_config(input_spec or {})
    output = OutputSpec.from_config(output_spec or {})
    source = {"kind": kind}
    if kind == "torchscript":
        source["file"] = sources.TORCHSCRIPT_FILE
    elif kind == "python":
        source.update({"file": sources.PYTHON_FILE, "class": class_name, "arguments": arguments,
                       "sha256": sources.file_sha256(Path(python)), "given_as": str(Path(python).resolve())})
    else:
        source.update({"network": monai, "arguments": arguments})
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": "classifier", "source": source,
              "input": spec.to_config(), "output": output.to_config(),
              "layers": {"named": dict(layers or {}), "default": default_layer},
              "decision_threshold": DEFAULT_THRESHOLD if threshold is None else float(threshold),
              "made_by": f"xaiexplain {__version__} bundle"}
    staging = {"torchscript": torchscript, "python": python}.get(kind)
    network = _network(kind, source, staging, weights, config)
    bundle = Bundle(path=Path(out), config=config, model=network)
    if threshold_from is not None:
        config["decision_threshold"], config["threshold_rule"] = _threshold_from(bundle, threshold_from)
    config["check"] = _check(bundle)
    with output_set(out, "config.json") as written:
        if kind == "torchscript":
            shutil.copyfile(torchscript, written.path(sources.TORCHSCRIPT_FILE))
        else:
            if kind == "python":
                shutil.copyfile(python, written.path(sources.PYTHON_FILE))
            shutil.copyfile(weights, written.path(sources.WEIGHTS_FILE))
        written.manifest_data = config
    from xaiexplain.models.bundles import load_bundle

    return load_bundle(out)


def _network(kind: str, source: dict, file, weights, config: dict) -> torch.nn.Module:
    """The network built from the user's files in place, weights loaded and checked against its contract."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        if file is not None:
            shutil.copyfile(file, folder / source["file"])
        network = sources.build_network(folder, config, "the model")
    if kind != "torchscript":
        _load_weights(network, Path(weights), Path("the model"))
    network.eval()
    _check_reads_its_patches(network, config, Path(source.get("given_as", "the model")) / "config.json",
                             "classifier")
    return network


def _check(bundle: Bundle) -> dict:
    """p(positive) on flat patches, and which methods the model allows (with the reasons)."""
    from xaiexplain.explainers import registry

    if bundle.contract.default_layer and not bundle.requirement_reasons["spatial layer"]:
        from xaiexplain.explainers.captum_methods import cam_layer_path

        cam_layer_path(bundle.contract, bundle.spatial_layers, "default")  # the named layer gives a map
    probabilities = {name: bundle.flat_probability(hu) for name, hu in CHECK_HU.items()}
    bad = [name for name, p in probabilities.items() if not np.isfinite(p)]
    if bad:
        raise XAIExplainError(f"the model's decision on a {bad[0]} patch is not a finite number")
    return {"flat_probabilities": probabilities,
            "methods": {name: registry.get(name).refusal(bundle) for name in registry.base_methods()}}


def _threshold_from(bundle: Bundle, patch_set) -> tuple[float, str]:
    from xaiexplain.data.patch_set import SPLITS, check_patch_shape, load_patch_set
    from xaiexplain.evaluate.classifier_metrics import threshold_closest_to_top_left

    arrays, _, _ = load_patch_set(patch_set)
    check_patch_shape(arrays["images"], bundle.patch_shape, patch_set, "the model")
    validation = arrays["split"] == SPLITS.index("validation")
    if len(set(arrays["label"][validation].tolist())) < 2:
        raise XAIExplainError(f"the validation split of {patch_set} does not hold both labels")
    probabilities = bundle.predict(arrays["images"][validation].astype(np.float32))
    threshold = threshold_closest_to_top_left(arrays["label"][validation], probabilities)
    return float(threshold), (f"validation ROC point closest to the top-left corner, on "
                              f"{int(validation.sum())} patches of {Path(patch_set).resolve()}")
