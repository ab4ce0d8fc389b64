"""Which device a run trains on: ``--device auto|cpu|cuda``, and the process's rank under torchrun."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
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


def join_process_group(device: torch.device) -> tuple[int, int]:
    """(rank, world size): under torchrun, join the process group (nccl on GPUs, gloo on CPUs)."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def start_run(device_name: str, seed: int) -> tuple[torch.device, int, int]:
    """Device, rank and world size of a training run, seeded; on CPU deterministic, so that the same seed
    (and a resumed run) gives the same weights."""
    device = select_device(device_name)
    rank, world = join_process_group(device)
    torch.manual_seed(seed)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)
    return device, rank, world
