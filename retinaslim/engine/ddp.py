"""torchrun's processes: the one place ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` are read.

Without torchrun there is one process of rank 0 and nothing here does anything. Under
``torchrun --nproc-per-node N``, training joins the process group (NCCL on CUDA, gloo on CPU) and wraps its
model in DistributedDataParallel; pseudo-label only shards its images by rank and waits at a gloo barrier.
"""

from __future__ import annotations

import os

import torch
from torch import nn


def rank() -> int:
    return int(os.environ.get("RANK", 0))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", 1))


def is_main_process() -> bool:
    """Rank 0: the process that validates, writes and reports."""
    return rank() == 0


def process_device(device: torch.device) -> torch.device:
    """This process's device: ``cuda:LOCAL_RANK`` for CUDA under torchrun with several processes, else ``device``."""
    if device.type == "cuda" and world_size() > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


def barrier() -> None:
    """Wait for every torchrun process, joining the process group with gloo if none is set up (a barrier needs
    no accelerator)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    dist.barrier()


class Distributed:
    """Training's view of torchrun: rank, world size, this process's device, the process group when there are
    several processes (NCCL on CUDA, gloo on CPU), and the DDP wrapper."""

    def __init__(self, device: torch.device):
        self.rank, self.world_size = rank(), world_size()
        self.device = process_device(device)
        if self.world_size > 1:
            import torch.distributed as dist

            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            if not dist.is_initialized():
                dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()

    def wrap(self, model: nn.Module) -> nn.Module:
        if self.world_size == 1:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)
