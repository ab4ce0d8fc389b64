"""Which device a run trains on (``--device auto|cpu|cuda``, chosen as the library chooses it for
explaining), and the process's rank under torchrun."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from xaiexplain.devices import describe, select_device

__all__ = ["describe", "join_process_group", "select_device", "start_run"]


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
