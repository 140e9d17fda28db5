"""A per-group latency table, measured once on the device the model will run on (SPDY-style).

Latency is not a formula of channel counts, so it is measured: for every group g and every count n on a
grid, the conv/Linear layers whose input or output g cuts are rebuilt at that width (every other group
whole) and timed alone on one batch with `torch.utils.benchmark`, in the memory layout the model will
run in (contiguous or channels-last). BatchNorm is not timed: deployment folds it into the conv. Between
grid points the time is interpolated linearly. A policy's latency is then

    latency(keep) = dense latency - sum_g (t_g(channels_g) - t_g(keep_g))       [milliseconds]

where the dense latency is a measured forward pass of the whole model. The table is a JSON object, so a
run measures it once and reuses it on resume.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.utils.benchmark as benchmark

from amc.engine.measure import latency, to_channels_last
from amc.engine.pruner import ChannelPruner


def _layer_at(module: nn.Module, in_width: int, out_width: int) -> nn.Module:
    """A fresh conv/Linear like `module` with `in_width` inputs (per conv group) and `out_width` outputs."""
    bias = module.bias is not None
    if isinstance(module, nn.Linear):
        return nn.Linear(in_width, out_width, bias=bias)
    if module.groups > 1:  # depthwise: one filter per channel
        return nn.Conv2d(out_width, out_width, module.kernel_size, module.stride, module.padding, module.dilation,
                         out_width, bias)
    return nn.Conv2d(in_width, out_width, module.kernel_size, module.stride, module.padding, module.dilation, 1, bias)


def _time_ms(layer: nn.Module, x: torch.Tensor, threads: int, min_run_time: float, channels_last: bool) -> float:
    if channels_last:
        layer, x = layer.to(memory_format=torch.channels_last), to_channels_last(x)
    timer = benchmark.Timer("layer(x)", globals={"layer": layer, "x": x}, num_threads=threads)
    with torch.no_grad():
        layer(x)
        return 1000.0 * timer.blocked_autorange(min_run_time=min_run_time).median


class LatencyTable:
    """Latency in milliseconds of kept channel counts, from per-group timings (see the module doc).

    `grid` holds, per group, the channel counts measured (ascending, ending at the full count) and
    `times` the summed latency of the group's layers at each of them; `dense` is the whole model's. The
    table holds for one batch size, CPU thread count and memory layout.
    """

    def __init__(self, grid: list[list[int]], times: list[list[float]], dense: float, batch_size: int,
                 threads: int, channels_last: bool = False) -> None:
        self.grid, self.times, self.dense = grid, times, dense
        self.batch_size, self.threads, self.channels_last = batch_size, threads, channels_last

    @classmethod
    def measure(cls, pruner: ChannelPruner, *, batch_size: int = 1, channels_last: bool = False, points: int = 6,
                threads: int | None = None, min_run_time: float = 0.05) -> LatencyTable:
        """Time every group's layers at `points` widths on the device of the pruner's model (batch `batch_size`,
        channels-last layout for image models if `channels_last`)."""
        threads = threads or torch.get_num_threads()
        device = next(pruner.model.parameters()).device
        modules = dict(pruner.model.named_modules())
        names = sorted(pruner.layers, key=lambda n: pruner.layers[n].order)
        grid, times = [], []
        for j, group in enumerate(pruner.groups):
            counts = np.unique(np.linspace(group.min_keep, group.channels, points).round().astype(int)).tolist()
            row = []
            for n in counts:
                keep = pruner.channels.copy()
                keep[j] = n
                ins, outs, _ = pruner.cost.widths(keep)
                total = 0.0
                for name in group.layers:
                    i = names.index(name)
                    layer = _layer_at(modules[name], int(ins[i]), int(outs[i])).to(device).eval()
                    if isinstance(layer, nn.Linear):
                        x = torch.randn(batch_size, layer.in_features, device=device)
                    else:
                        x = torch.randn(batch_size, layer.in_channels, *pruner.layers[name].in_hw, device=device)
                    total += _time_ms(layer, x, threads, min_run_time, channels_last)
                row.append(total)
            grid.append(counts)
            # timing noise must not make a wider layer look faster: the budget wall relies on monotone costs
            times.append(np.maximum.accumulate(row).tolist())
        dense = latency(pruner.model, pruner.input_shape, batch_size, threads=threads, repeats=3,
                        channels_last=channels_last, device=device)
        return cls(grid, times, dense, batch_size, threads, channels_last)

    def __call__(self, keep: np.ndarray) -> np.ndarray:
        """Predicted latency (ms) of kept counts `keep` [..., G]; returns shape [...]."""
        keep = np.asarray(keep, dtype=np.float64)
        saved = np.zeros(keep.shape[:-1])
        for j, (counts, times) in enumerate(zip(self.grid, self.times)):
            saved = saved + times[-1] - np.interp(keep[..., j], counts, times)
        return self.dense - saved

    def to_dict(self) -> dict[str, Any]:
        return {"grid": self.grid, "times_ms": self.times, "dense_ms": self.dense, "batch_size": self.batch_size,
                "threads": self.threads, "channels_last": self.channels_last}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyTable:
        return cls(data["grid"], data["times_ms"], data["dense_ms"], data["batch_size"], data["threads"],
                   data.get("channels_last", False))
