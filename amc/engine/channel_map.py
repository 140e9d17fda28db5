"""`ChannelMap`: a parameter-free shortcut that places each input channel at a known output channel, and
the rule that prunes it on both sides.

The option-A shortcut of the CIFAR ResNets (He et al. 2016, Sec. 4.2) subsamples the map and zero-pads the
channels: stage s's residual channel i lands at channel i + pad of stage s + 1. A dependency graph that
treats the pad as an element-wise op couples channel i of one stage with channel i of the next, which is
wrong (Torch-Pruning merges all three stages into one group). Written as an index map, the shortcut is a
layer whose input channels belong to one stage's channel group and whose output channels belong to the
next one's, each pruned by its own rule:
- removing input channels removes their entries from the map;
- removing output channels drops the input channels that landed there and renumbers the rest.
Masking an input channel (`mask_inputs`) stops it from being carried, which is what removing it does: the
pruned == masked check of every channel group holds for the groups that cross a `ChannelMap`.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp
from torch import Tensor


class ChannelMap(nn.Module):
    """Input channel i goes to output channel `index[i]` (nowhere where `index[i]` < 0); the other output
    channels are zero. The map is subsampled by `stride` first.

    [N, in_channels, H, W] -> [N, out_channels, ceil(H / stride), ceil(W / stride)].
    `index` is a buffer left out of the state dict: it is rebuilt with the model and changed only by pruning,
    so checkpoints of the unpruned model load unchanged.
    """

    def __init__(self, in_channels: int, out_channels: int, index: Sequence[int] | Tensor, stride: int = 1) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.stride = stride
        self.set_index(torch.as_tensor(index, dtype=torch.long))

    def set_index(self, index: Tensor) -> None:
        """Replace the map (long [in_channels]; -1: not carried).

        Raises:
            ValueError: an entry at or above `out_channels`, or two inputs landing on one output channel.
        """
        index = torch.as_tensor(index, dtype=torch.long).reshape(-1).cpu()
        carried = index >= 0
        dst = index[carried]
        if len(dst) and (int(dst.max()) >= self.out_channels or len(dst.unique()) != len(dst)):
            raise ValueError(f"a channel map sends its inputs to distinct outputs below {self.out_channels}")
        device = getattr(self, "index", index).device
        self.register_buffer("index", index.to(device), persistent=False)
        # the map as a gather: output channel o reads input channel gather[o], or, where no input lands, a zero
        # channel appended after the inputs (one indexing op: no device sync, and it traces with torch.fx)
        gather = torch.full((self.out_channels,), len(index), dtype=torch.long)
        gather[dst] = carried.nonzero().reshape(-1)
        self.register_buffer("gather", gather.to(device), persistent=False)
        # a map that keeps every input in order at an offset is a zero pad: the fastest form, and the one of
        # the unpruned option-A shortcut
        offset = int(dst[0]) if len(dst) else 0
        contiguous = bool(carried.all()) and torch.equal(dst, torch.arange(len(dst)) + offset)
        self.pads = (offset, self.out_channels - len(dst) - offset) if contiguous else None

    @property
    def in_channels(self) -> int:
        """Input channels: the length of the map."""
        return len(self.index)

    def forward(self, x: Tensor) -> Tensor:
        if _TRACING and torch.is_grad_enabled():
            return _OneOp.apply(x, self)
        return self._map(x)

    def _map(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.pads is not None:
            return F.pad(x, (0, 0, 0, 0, *self.pads))
        return F.pad(x, (0, 0, 0, 0, 0, 1)).index_select(1, self.gather)

    def mask_inputs(self, idxs: Sequence[int]) -> None:
        """Stop carrying input channels `idxs`: what pruning them does to the output."""
        index = self.index.clone()
        index[list(idxs)] = -1
        self.set_index(index)

    def extra_repr(self) -> str:
        carried = int((self.index >= 0).sum())
        form = f"zero pad {self.pads}" if self.pads is not None else f"carries {carried} of {self.in_channels} inputs"
        return f"in_channels={self.in_channels}, out_channels={self.out_channels}, stride={self.stride}, {form}"


_TRACING = False


class _OneOp(torch.autograd.Function):
    """The map as one autograd node, for Torch-Pruning's graph: it walks the autograd graph and would treat
    the slicing and padding inside the map as element-wise ops of the input channels."""

    @staticmethod
    def forward(ctx, x: Tensor, layer: ChannelMap) -> Tensor:  # noqa: ANN001
        return layer._map(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> None:  # noqa: ANN001
        raise RuntimeError("ChannelMap's tracing form is for building the dependency graph, not for training")


@contextmanager
def traced_as_one_op() -> Iterator[None]:
    """Within the block, a `ChannelMap` run with gradients enabled is one autograd node (see `_OneOp`)."""
    global _TRACING
    before, _TRACING = _TRACING, True
    try:
        yield
    finally:
        _TRACING = before


class ChannelMapPruner(tp.pruner.BasePruningFunc):
    """Torch-Pruning's rule for `ChannelMap`: input and output channels are pruned independently (two
    channel groups), each side renumbering the map."""

    TARGET_MODULES = ChannelMap

    def prune_out_channels(self, layer: ChannelMap, idxs: Sequence[int]) -> ChannelMap:
        removed = torch.zeros(layer.out_channels, dtype=torch.bool)
        removed[list(idxs)] = True
        shift = torch.cumsum(removed.long(), 0)  # removed outputs at or below each output channel
        index = layer.index.cpu()
        carried = index >= 0
        lands = index.clamp_min(0)
        index = torch.where(carried & ~removed[lands], index - shift[lands], torch.full_like(index, -1))
        layer.out_channels -= len(set(idxs))
        layer.set_index(index)
        return layer

    def prune_in_channels(self, layer: ChannelMap, idxs: Sequence[int]) -> ChannelMap:
        kept = torch.ones(layer.in_channels, dtype=torch.bool)
        kept[list(idxs)] = False
        layer.set_index(layer.index.cpu()[kept])
        return layer

    def get_out_channels(self, layer: ChannelMap) -> int:
        return layer.out_channels

    def get_in_channels(self, layer: ChannelMap) -> int:
        return layer.in_channels


def channel_map_pruners(model: nn.Module) -> dict[type, ChannelMapPruner]:
    """The `customized_pruners` argument of Torch-Pruning's graph for `model`: its lookup is by exact class,
    so every subclass of `ChannelMap` in the model is named."""
    return {type(m): ChannelMapPruner() for m in model.modules() if isinstance(m, ChannelMap)}
