"""MACs and parameter counts: a hook-based counter (the oracle) and an analytic per-group model.

"FLOPs" in the pruning literature are multiply-accumulates of conv and Linear layers; that is what
both counters return. The analytic model gives MACs and parameters of the whole network as a function
of the number of channels kept in every group, exactly, in microseconds: the search calls it
thousands of times.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from amc.engine.groups import ChannelGroup, LayerInfo


def count_macs_params(model: nn.Module, input_shape: Sequence[int]) -> tuple[int, int]:
    """Multiply-accumulates of one input of shape (C, H, W), counted by torch's operator-level counter
    (`torch.utils.flop_counter.FlopCounterMode`: every convolution and matrix product as it runs, every time
    it runs, whatever module or function issues it; MACs = FLOPs / 2), and the number of parameters (every
    element of `model.parameters()`). The oracle the analytic `CostModel` is checked against."""
    was_training = model.training
    model.eval()
    device = next(iter(model.parameters()), torch.zeros(0)).device  # count where the model lives
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2, sum(p.numel() for p in model.parameters())


class CostModel:
    """Exact MACs and parameters as a function of the channels kept per group.

    For each conv/Linear layer l: MACs_l = in_l * out_l * unit_l, where in_l is its input channels per
    conv group (1 for a depthwise conv), out_l its output channels and unit_l = kH * kW * (outputs per
    image and channel, over all its calls): H_out * W_out for a conv, the number of tokens for a Linear
    applied per token. in_l and out_l are affine in the kept counts: every group channel removed takes
    `per_channel` features from a coupled dimension. BatchNorm adds 2 parameters per channel.
    Everything that no group touches is a constant.
    """

    def __init__(self, model: nn.Module, groups: Sequence[ChannelGroup], layers: dict[str, LayerInfo]) -> None:
        self.group_names = [g.name for g in groups]
        self.full = np.array([g.channels for g in groups], dtype=np.int64)
        modules = dict(model.named_modules())
        names = sorted(layers, key=lambda n: layers[n].order)
        index = {n: i for i, n in enumerate(names)}
        n_layers, n_groups = len(names), len(groups)
        self._in0 = np.zeros(n_layers, dtype=np.int64)
        self._out0 = np.zeros(n_layers, dtype=np.int64)
        self._unit = np.zeros(n_layers, dtype=np.int64)
        self._kk = np.zeros(n_layers, dtype=np.int64)
        self._bias = np.zeros(n_layers, dtype=np.int64)
        self._in_cut = np.zeros((n_layers, n_groups), dtype=np.int64)  # features lost per channel removed
        self._out_cut = np.zeros((n_layers, n_groups), dtype=np.int64)
        for i, name in enumerate(names):
            info, module = layers[name], modules[name]
            self._in0[i] = info.in_channels // info.groups
            self._out0[i] = info.out_channels
            self._kk[i] = info.kernel_area
            self._unit[i] = info.kernel_area * info.positions
            self._bias[i] = int(module.bias is not None)
        norms = sorted({it.module for g in groups for it in g.items if it.kind == "norm"})
        norm_index = {n: i for i, n in enumerate(norms)}
        self._norm_cut = np.zeros((len(norms), n_groups), dtype=np.int64)
        self._norm0 = np.array([modules[n].num_features for n in norms], dtype=np.int64)
        self._norm_affine = np.array([int(modules[n].affine) for n in norms], dtype=np.int64)
        for j, group in enumerate(groups):
            for item in group.items:
                if item.kind == "norm":
                    self._norm_cut[norm_index[item.module], j] += item.per_channel
                elif item.kind == "out":
                    self._out_cut[index[item.module], j] += item.per_channel
                elif item.kind == "in":
                    self._in_cut[index[item.module], j] += item.per_channel
                # a ChannelMap ("map_in", "map_out") moves channels: no MACs, no parameters
        self.other_macs = 0  # MACs outside conv/Linear layers (e.g. attention products): see ChannelPruner
        modelled = set(names) | set(norms)
        self._fixed_params = sum(
            p.numel() for n, m in modules.items() if n not in modelled for p in m.parameters(recurse=False)
        )

    def widths(self, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Widths for kept counts `keep` [..., G]: each layer's input channels per conv group and output
        channels ([..., L], layers in execution order), and each BatchNorm's channels."""
        removed = self.full - np.asarray(keep, dtype=np.int64)  # [..., G]
        ins = self._in0 - removed @ self._in_cut.T  # [..., L]
        outs = self._out0 - removed @ self._out_cut.T
        norms = self._norm0 - removed @ self._norm_cut.T
        return ins, outs, norms

    def width_map(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The affine map of `widths`, per layer in execution order: (in0 [L], in_cut [L, G], out0 [L],
        out_cut [L, G]); a layer's input width is in0 - in_cut @ (channels - keep), its output width likewise."""
        return self._in0.copy(), self._in_cut.copy(), self._out0.copy(), self._out_cut.copy()

    def macs(self, keep: np.ndarray | Sequence[int]) -> np.ndarray:
        """MACs for kept channel counts `keep` of shape [..., G] (G groups); returns shape [...]."""
        ins, outs, _ = self.widths(np.asarray(keep))
        return (ins * outs * self._unit).sum(-1) + self.other_macs

    def params(self, keep: np.ndarray | Sequence[int]) -> np.ndarray:
        """Parameter count for kept channel counts `keep` of shape [..., G]; returns shape [...]."""
        ins, outs, norms = self.widths(np.asarray(keep))
        layer = (ins * outs * self._kk + outs * self._bias).sum(-1)
        return layer + (2 * norms * self._norm_affine).sum(-1) + self._fixed_params

    def group_macs(self) -> np.ndarray:
        """MACs that each group's channels take part in, in the full model: shape [G] (see `group_costs`)."""
        return group_costs(self.macs, self.full)


def group_costs(cost: Callable[[np.ndarray], np.ndarray], full: np.ndarray) -> np.ndarray:
    """What each group's channels cost in the full model: the drop in `cost` when that group alone is
    removed, shape [G]. A layer between two groups counts for both: the size of a group in the search
    state and in `amc profile`."""
    dense = float(cost(full))
    shares = []
    for j in range(len(full)):
        keep = full.copy()
        keep[j] = 0
        shares.append(dense - float(cost(keep)))
    return np.array(shares)
