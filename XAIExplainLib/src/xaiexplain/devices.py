"""Which device the models run on: ``--device auto|cpu|cuda|mps``, the same for explaining and for training.

    python -m xaiexplain.devices      prints the devices this Python's PyTorch can use, as one JSON line
                                      (the Slicer module asks its worker's Python so, for its GPU choices)
"""
from __future__ import annotations

import os

from xaiexplain.errors import XAIExplainError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")  # mps: Apple silicon's GPU


def select_device(name: str = "auto"):
    """The torch.device: ``auto`` takes the GPU when there is one (under torchrun the one of the process's
    LOCAL_RANK); ``cuda`` without a GPU is a user error."""
    import torch  # here, so that the command lines that name the choices start without torch

    if name not in DEVICE_CHOICES:
        raise XAIExplainError(f"--device {name} is not one of {', '.join(DEVICE_CHOICES)}")
    if name == "cuda" and not torch.cuda.is_available():
        raise XAIExplainError("--device cuda was asked for, but PyTorch sees no CUDA GPU on this machine")
    if name == "mps":
        if not _mps_available(torch):
            raise XAIExplainError("--device mps was asked for, but PyTorch sees no Apple MPS GPU on this machine")
        return torch.device("mps")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


def describe(device) -> str:
    import torch

    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        return f"{device} ({properties.name}, {properties.total_memory / 2**30:.0f} GiB)"
    return f"cpu ({torch.get_num_threads()} threads)"


def _mps_available(torch) -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def usable_devices() -> list[str]:
    """The devices PyTorch can use here: always cpu, then cuda and mps where there are such GPUs."""
    import torch

    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) + (["mps"] if _mps_available(torch) else [])


if __name__ == "__main__":
    import json

    print(json.dumps({"xaiexplain": "devices", "devices": usable_devices()}))
