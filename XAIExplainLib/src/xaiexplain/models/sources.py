"""Where a bundle's network comes from (its ``config.json``'s ``source``), and how it is built. Nothing is
ever unpickled.

- ``architecture``: one of ours (``architectures.ARCHITECTURES``) with its constructor arguments, weights in
  ``model.safetensors`` (the shipped bundles; the default when a config has no ``source``);
- ``torchscript``: a TorchScript file in the bundle (``torch.jit.load``: no Python code of the user runs);
- ``python``: a class in a Python file the user gave, copied into the bundle as ``model.py`` with its SHA-256,
  built with its arguments, weights in ``model.safetensors``. **Loading such a bundle runs that file's code**:
  XAIExplain runs a user's code only where they name it (``xaiexplain bundle --python``), and refuses the
  bundle if the file no longer has the recorded hash;
- ``monai``: a network of ``monai.networks.nets`` by name with its arguments, weights in ``model.safetensors``.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path

import torch
from torch import nn

from xaiexplain.errors import XAIExplainError

SOURCES = {"architecture": "an architecture of XAIExplain", "torchscript": "a TorchScript file",
           "python": "a class of a Python file", "monai": "a MONAI network"}
TORCHSCRIPT_FILE = "model.pt"
PYTHON_FILE = "model.py"
WEIGHTS_FILE = "model.safetensors"


def source_of(config: dict) -> dict:
    """The config's ``source``, with ``architecture`` (and the config's own architecture) as the default."""
    return config.get("source") or {"kind": "architecture"}


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def check_source(source, config_file) -> str:
    """The source's kind, or one sentence naming ``config_file`` and what is wrong with its source."""
    if not isinstance(source, dict) or source.get("kind") not in SOURCES:
        raise XAIExplainError(f"{config_file} needs source.kind to be one of {', '.join(SOURCES)}, not "
                              f"{source.get('kind') if isinstance(source, dict) else source!r}")
    kind = source["kind"]
    if kind in ("python", "monai"):
        name = source.get("class" if kind == "python" else "network")
        if not (isinstance(name, str) and name.isidentifier()):
            raise XAIExplainError(f"{config_file} needs source.{'class' if kind == 'python' else 'network'} to be "
                                  f"a Python name, not {name!r}")
        if not isinstance(source.get("arguments", {}), dict):
            raise XAIExplainError(f"{config_file} needs source.arguments to be a JSON object of the constructor's "
                                  f"arguments")
    if kind == "python" and not (isinstance(source.get("sha256"), str) and len(source["sha256"]) == 64):
        raise XAIExplainError(f"{config_file} needs source.sha256, the hash of its {PYTHON_FILE}")
    return kind


def weights_files(kind: str) -> tuple[str, ...]:
    """The files besides ``config.json`` that a bundle of this source holds."""
    return {"torchscript": (TORCHSCRIPT_FILE,), "python": (PYTHON_FILE, WEIGHTS_FILE)}.get(kind, (WEIGHTS_FILE,))


def python_class(file: Path, class_name: str):
    """The class ``class_name`` of the Python file ``file`` (its code runs)."""
    module_name = f"xaiexplain_user_model_{file_sha256(file)[:16]}"
    module = sys.modules.get(module_name)
    if module is None:
        spec = importlib.util.spec_from_file_location(module_name, file)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as error:
            raise XAIExplainError(f"{file} fails when it is run ({type(error).__name__}: {error})") from None
        sys.modules[module_name] = module  # so that fx and copies find the class again
    network_class = getattr(module, class_name, None)
    if not (isinstance(network_class, type) and issubclass(network_class, nn.Module)):
        raise XAIExplainError(f"{file} has no torch.nn.Module class {class_name}")
    return network_class


def monai_class(name: str):
    try:
        nets = importlib.import_module("monai.networks.nets")
    except ImportError:
        raise XAIExplainError("a MONAI bundle needs MONAI: pip install monai") from None
    network_class = getattr(nets, name, None)
    if not (isinstance(network_class, type) and issubclass(network_class, nn.Module)):
        raise XAIExplainError(f"monai.networks.nets has no network {name}")
    return network_class


def constructed(network_class, arguments: dict, where: str) -> nn.Module:
    try:
        return network_class(**arguments)
    except Exception as error:  # a user's constructor may raise anything
        raise XAIExplainError(f"{where} cannot be built from its arguments ({type(error).__name__}: {error})") from None


def build_network(folder: Path, config: dict, config_file) -> nn.Module:
    """The network of a bundle folder (weights not yet loaded, except a TorchScript file's), on the CPU."""
    from xaiexplain.models import architectures

    source = source_of(config)
    kind = source["kind"]
    if kind == "torchscript":
        file = folder / source.get("file", TORCHSCRIPT_FILE)
        try:
            return torch.jit.load(str(file), map_location="cpu")
        except Exception as error:  # torch raises RuntimeError and others for files that are not TorchScript
            raise XAIExplainError(f"{file} cannot be read as TorchScript ({type(error).__name__})") from None
    if kind == "python":
        file = folder / PYTHON_FILE
        if file_sha256(file) != source["sha256"]:
            raise XAIExplainError(f"{file} is not the file the bundle was made from (its SHA-256 differs): make the "
                                  f"bundle again with xaiexplain bundle --python")
        return constructed(python_class(file, source["class"]), source.get("arguments", {}),
                           f"{source['class']} of {file}")
    if kind == "monai":
        return constructed(monai_class(source["network"]), source.get("arguments", {}),
                           f"monai.networks.nets.{source['network']}")
    try:
        return architectures.build(config["architecture"], config.get("arguments", {}))
    except (TypeError, ValueError, RuntimeError) as error:
        raise XAIExplainError(f"the architecture in {config_file} cannot be built from its arguments "
                              f"({error})") from None
