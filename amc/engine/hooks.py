"""Forward hooks that never outlive their block."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import torch.nn as nn


@contextmanager
def forward_hooks(hooks: Mapping[nn.Module, Callable], *, pre: bool = False) -> Iterator[None]:
    """Register `hooks[module]` on each module for the block (`register_forward_pre_hook` if `pre`, else
    `register_forward_hook`); every hook is removed on exit, also when the block raises, so a failed
    forward pass never leaves a model that records or rewrites tensors."""
    handles = [m.register_forward_pre_hook(fn) if pre else m.register_forward_hook(fn) for m, fn in hooks.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
