"""The torch device a command computes on, checked before any work."""

from __future__ import annotations

import torch

from amc.errors import AmcError


def resolve_device(name: str) -> torch.device:
    """`name` ("cpu", "cuda" or "cuda:N") as a torch device that exists on this machine.

    Raises:
        AmcError: an unknown name, another device type, or a CUDA device this machine does not have: nothing
            ever falls back to the CPU silently.
    """
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise AmcError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise AmcError(f"device {name!r} is not supported; use cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise AmcError(f"device {name} was asked for but CUDA is not available here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise AmcError(f"device {name} does not exist: this machine has {torch.cuda.device_count()} CUDA "
                           "device(s); use cuda:0 or another index below that")
    return device
