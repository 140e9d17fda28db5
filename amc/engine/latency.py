"""A per-layer latency table, measured once on the device the model will run on (SPDY-style).

Latency is not a formula of channel counts, so it is measured: every conv/Linear layer that some group narrows is
rebuilt at widths on a grid and timed alone on one batch with `torch.utils.benchmark`, in the memory layout the
model will run in (contiguous or channels-last). A layer's input and output may be cut by two different groups
(the conv1 of a ResNet block reads the residual stream and writes the block's own channels), and its time is not
the sum of what each cut saves alone (it scales with their product), so such a layer is timed on a 2-D grid of
(input width, output width) and interpolated bilinearly; a layer cut on one side only, on a 1-D grid. Layer widths
follow from the kept counts exactly (`CostModel.widths`). BatchNorm is not timed: deployment folds it into the
conv. A policy's latency is then

    latency(keep) = dense latency - scale * sum_l (t_l(full widths) - t_l(widths_l(keep)))     [milliseconds]

where the dense latency is a measured forward pass of the whole model. Layers timed alone miss what a whole
network spends beside them in proportion to its widths (the ReLUs, residual adds and shortcuts on every
activation, the memory traffic between layers), so `scale` is calibrated once on a whole model: the dense model
and the one keeping half of every group are timed together, and `scale` makes the table predict that model's
measured latency exactly. The table is a JSON object, so a run measures it once and reuses it on resume.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.utils.benchmark as benchmark

from amc.engine.budget import min_counts
from amc.engine.groups import prune_copy
from amc.engine.measure import latencies, to_channels_last
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


def _interp2(x: np.ndarray, y: np.ndarray, xs: np.ndarray, ys: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Bilinear interpolation of `table` [len(xs), len(ys)] at points (x, y) (same shapes), clamped to the grid;
    a grid of one point along an axis is constant along it."""
    def cell(v: np.ndarray, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if len(grid) == 1:
            return np.zeros(v.shape, dtype=int), np.zeros(v.shape)
        v = np.clip(v, grid[0], grid[-1])
        i = np.clip(np.searchsorted(grid, v, side="right") - 1, 0, len(grid) - 2)
        return i, (v - grid[i]) / (grid[i + 1] - grid[i])

    (i, u), (j, w) = cell(x, xs), cell(y, ys)
    i1, j1 = np.minimum(i + 1, len(xs) - 1), np.minimum(j + 1, len(ys) - 1)
    return ((1 - u) * (1 - w) * table[i, j] + u * (1 - w) * table[i1, j] + (1 - u) * w * table[i, j1]
            + u * w * table[i1, j1])


def _width_grid(full: int, smallest: int, points: int) -> list[int]:
    """`points` widths from `smallest` to `full` (ascending, whole, distinct)."""
    return np.unique(np.linspace(smallest, full, points).round().astype(int)).tolist()


class LatencyTable:
    """Latency in milliseconds of kept channel counts, from per-layer timings (see the module doc).

    `layers` holds, per timed layer: its name, the affine map from kept counts to its widths (`in0`, `in_cut`,
    `out0`, `out_cut`: width = w0 - sum_g cut[g] * (channels_g - keep_g)), the input and output widths measured
    (`in_grid`, `out_grid`, ascending) and `times_ms` [len(in_grid)][len(out_grid)]. `dense` is the whole model's
    latency and `scale` the calibration of the layers' savings on a whole model (module doc). The table holds for
    one batch size, CPU thread count and memory layout.
    """

    def __init__(self, full: list[int], layers: list[dict[str, Any]], dense: float, batch_size: int,
                 threads: int, channels_last: bool = False, scale: float = 1.0) -> None:
        self.full, self.layers, self.dense, self.scale = np.asarray(full, dtype=np.int64), layers, dense, scale
        self.batch_size, self.threads, self.channels_last = batch_size, threads, channels_last
        # the layers as arrays once: the search calls the table on every step
        self._arrays = [tuple(np.asarray(layer[key], dtype=np.float64)
                              for key in ("in0", "in_cut", "out0", "out_cut", "in_grid", "out_grid", "times_ms"))
                        for layer in layers]

    @classmethod
    def measure(cls, pruner: ChannelPruner, *, batch_size: int = 1, channels_last: bool = False, points: int = 5,
                threads: int | None = None, min_run_time: float = 0.05) -> LatencyTable:
        """Time every narrowed layer at `points` widths per narrowed side on the device of the pruner's model (batch
        `batch_size`, channels-last layout for image models if `channels_last`)."""
        threads = threads or torch.get_num_threads()
        device = next(pruner.model.parameters()).device
        modules = dict(pruner.model.named_modules())
        in0, in_cut, out0, out_cut = pruner.cost.width_map()
        names = sorted(pruner.layers, key=lambda n: pruner.layers[n].order)
        smallest = pruner.cost.widths(min_counts(pruner))
        layers = []
        for i, name in enumerate(names):
            if not (in_cut[i].any() or out_cut[i].any()):
                continue  # no group narrows it: its time is part of the constant rest
            in_grid = _width_grid(int(in0[i]), int(smallest[0][i]), points if in_cut[i].any() else 1)
            out_grid = _width_grid(int(out0[i]), int(smallest[1][i]), points if out_cut[i].any() else 1)
            times = np.zeros((len(in_grid), len(out_grid)))
            for a, in_width in enumerate(in_grid):
                for b, out_width in enumerate(out_grid):
                    layer = _layer_at(modules[name], in_width, out_width).to(device).eval()
                    if isinstance(layer, nn.Linear):
                        x = torch.randn(batch_size, layer.in_features, device=device)
                    else:
                        x = torch.randn(batch_size, layer.in_channels, *pruner.layers[name].in_hw, device=device)
                    times[a, b] = _time_ms(layer, x, threads, min_run_time, channels_last)
            # timing noise must not make a wider layer look faster: the budget wall relies on monotone costs
            times = np.maximum.accumulate(np.maximum.accumulate(times, axis=0), axis=1)
            layers.append({"name": name, "in0": int(in0[i]), "in_cut": in_cut[i].tolist(),
                           "out0": int(out0[i]), "out_cut": out_cut[i].tolist(),
                           "in_grid": in_grid, "out_grid": out_grid, "times_ms": times.tolist()})
        # the calibration model: half of every group's channels (what a 2x budget is near)
        half = np.maximum(min_counts(pruner), np.ceil(pruner.channels / 2)).astype(int)
        halved = prune_copy(pruner.model, pruner.groups, {g.name: torch.arange(int(n)) for g, n in zip(pruner.groups, half)})
        dense, measured = latencies([pruner.model, halved], pruner.input_shape, batch_size, threads=threads, repeats=3,
                                    channels_last=channels_last, device=device)
        table = cls(pruner.channels.tolist(), layers, dense, batch_size, threads, channels_last)
        saved = dense - float(table(half))  # the layers' own saving at the calibration model
        if saved > 0 and measured < dense:
            table.scale = (dense - measured) / saved
        return table

    def __call__(self, keep: np.ndarray) -> np.ndarray:
        """Predicted latency (ms) of kept counts `keep` [..., G]; returns shape [...]."""
        removed = self.full - np.asarray(keep, dtype=np.float64)
        saved = np.zeros(removed.shape[:-1])
        for in0, in_cut, out0, out_cut, xs, ys, times in self._arrays:
            saved = saved + times[-1, -1] - _interp2(in0 - removed @ in_cut, out0 - removed @ out_cut, xs, ys, times)
        return self.dense - self.scale * saved

    def to_dict(self) -> dict[str, Any]:
        return {"format": "amc-latency/2", "full": self.full.tolist(), "layers": self.layers, "dense_ms": self.dense,
                "scale": self.scale, "batch_size": self.batch_size, "threads": self.threads,
                "channels_last": self.channels_last}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyTable:
        """The table of `to_dict`.

        Raises:
            ValueError: a table of another format (an older amc's per-group table): measure it again.
        """
        if data.get("format") != "amc-latency/2":
            raise ValueError("a latency table of another format (measure it again)")
        return cls(data["full"], data["layers"], data["dense_ms"], data["batch_size"], data["threads"],
                   data.get("channels_last", False), data["scale"])
