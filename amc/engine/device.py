"""The torch device a command computes on, checked before any work."""

from __future__ import annotations

import re

import torch

from amc.errors import AmcError


def resolve_device(name: str = "auto") -> torch.device:
    """`name` ("auto", "cpu", "cuda" or "cuda:N") as a torch device that exists on this machine; "auto" is the
    first CUDA device when there is one, else the CPU.

    Raises:
        AmcError: an unknown name, another device type, or a CUDA device this machine does not have: nothing
            ever falls back to the CPU silently.
    """
    if name == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    # torch also takes ints, "cuda:00" and other spellings: accept only the names amc documents
    if not isinstance(name, str) or not re.fullmatch(r"cpu|cuda(:(0|[1-9][0-9]*))?|[a-z]+(:[0-9]+)?", name):
        raise AmcError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise AmcError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise AmcError(f"device {name!r} is not supported; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise AmcError(f"device {name} was asked for but CUDA is not available here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise AmcError(f"device {name} does not exist: this machine has {torch.cuda.device_count()} CUDA "
                           "device(s); use cuda:0 or another index below that")
    return device


def fast_dtype(device: torch.device) -> torch.dtype:
    """The dtype the reward's forward passes run in on `device` (`torch.autocast`): bfloat16 where the hardware
    computes it natively (a CUDA device that supports it; a CPU with AVX512-BF16 or AMX), else float32.
    Least-squares solves and statistics never use it: they stay float32/float64."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    native = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)() or \
        getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    return torch.bfloat16 if native else torch.float32
