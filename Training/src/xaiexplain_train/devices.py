"""Which device a run trains on: ``--device auto|cpu|cuda``, and the process's rank under torchrun."""
from __future__ import annotations

import os

import torch

from xaiexplain.errors import XAIExplainError


def select_device(name: str = "auto") -> torch.device:
    """``auto`` takes the GPU when there is one; ``cuda`` without a GPU is a user error."""
    if name not in ("auto", "cpu", "cuda"):
        raise XAIExplainError(f"--device {name} is not one of auto, cpu, cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise XAIExplainError("--device cuda was asked for, but PyTorch sees no CUDA GPU on this machine")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    return torch.device("cuda", local_rank)


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        return f"{device} ({properties.name}, {properties.total_memory / 2**30:.0f} GiB)"
    return f"cpu ({torch.get_num_threads()} threads)"
