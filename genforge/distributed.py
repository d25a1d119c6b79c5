"""Processes: one, or one of WORLD_SIZE started by torchrun; only rank 0 writes files."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from genforge.devices import pick_device


@dataclass(frozen=True)
class Processes:
    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_processes(device: str) -> Processes:
    """One process, or one of WORLD_SIZE started by torchrun (nccl when each has a GPU, else gloo)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Processes(0, 1, pick_device(device))
    # torch.distributed.nn.functional binds `group.WORLD` into ten default arguments when first imported,
    # and torch imports it lazily (torch.optim's first optimizer imports torch._dynamo, which imports it).
    # Imported after the group exists, it would hold the group past destroy_process_group: gloo's worker
    # threads would then live into interpreter shutdown, and one that drops the last reference to a finished
    # collective's tensors there needs the GIL, which exits the thread through C++ code -> std::terminate
    # (SIGABRT) after training completed. Imported first, its defaults are None (the default group).
    import torch.distributed.nn.functional  # noqa: F401
    if device != "cpu" and torch.cuda.is_available():
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
        dist.init_process_group("nccl")
    else:
        dev = torch.device("cpu")
        dist.init_process_group("gloo")
    return Processes(dist.get_rank(), world, dev)


def close_processes(procs: Processes) -> None:
    if procs.world > 1:
        dist.destroy_process_group()
