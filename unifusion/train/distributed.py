"""Process-group set-up for `torchrun` (one process per GPU, or several CPU processes with gloo).

Owns the reading of torchrun's environment (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`;
PyTorch docs, "torchrun (Elastic Launch)") and the choice of backend: NCCL when CUDA is used, gloo otherwise.
Without those variables everything runs in one process and no process group is created.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init_distributed", "all_reduce_mean", "barrier"]


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _pick_device(device: str, local_rank: int) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device='cuda' was asked for but CUDA is not available; use 'cpu' or 'auto'")
        return torch.device("cuda", local_rank)
    if device != "cpu":
        raise ValueError(f"device={device!r} is not one of ['auto', 'cpu', 'cuda']")
    return torch.device("cpu")


def init_distributed(device: str = "auto") -> DistInfo:
    """Join torchrun's process group if `WORLD_SIZE > 1` (idempotent) and return this process's rank and device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = _pick_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world)
    return DistInfo(rank, world, local_rank, dev)


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of `x` over all processes (identity without a process group)."""
    if dist.is_available() and dist.is_initialized():
        x = x.clone()
        dist.all_reduce(x)
        x /= dist.get_world_size()
    return x


def barrier() -> None:
    """Wait for every process (no-op without a process group)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
