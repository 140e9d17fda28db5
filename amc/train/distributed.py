"""Process-group helpers for runs launched by `torchrun` (one process per device).

Outside torchrun (no WORLD_SIZE, or WORLD_SIZE=1) every helper is a no-op and the process is rank 0
of 1, so callers need no separate single-process code path.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_from_env(backend: str = "gloo") -> tuple[int, int]:
    """Join the process group described by torchrun's environment variables.

    Args:
        backend: `gloo` for CPU tensors, `nccl` for CUDA tensors. Ignored when a group already exists.

    Returns:
        (rank, world_size): (0, 1) when not launched by torchrun with more than one process.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return 0, 1
    if backend == "nccl":
        # NCCL needs each process bound to its own GPU before the group forms.
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)  # reads MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE
    return dist.get_rank(), dist.get_world_size()


def is_main() -> bool:
    """True on the process that writes files and prints: rank 0, or the only process."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    # Before joining (or after leaving) the group, torchrun's RANK still says who we are.
    return int(os.environ.get("RANK", "0")) == 0


def barrier() -> None:
    """Wait until every process reaches this point; a no-op without a process group."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    """Leave and destroy the process group, if one exists."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
