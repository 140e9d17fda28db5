"""A per-layer latency table, measured once on the device the model will run on (SPDY-style).

Latency is not a formula of channel counts, so it is measured: every conv/Linear layer that some group narrows is
rebuilt at widths on a grid and timed alone on one batch with `torch.utils.benchmark`, in the memory layout the
model will run in (contiguous or channels-last). A layer's input and output may be cut by two different groups
(the conv1 of a ResNet block reads the residual stream and writes the block's own channels), and its time is not
the sum of what each cut saves alone (it scales with their product), so such a layer is timed on a 2-D grid of
(input width, output width) and interpolated bilinearly; a layer cut on one side only, on a 1-D grid. Layer widths
follow from the kept counts exactly (`CostModel.widths`). BatchNorm is not timed: deployment folds it into the
conv. A policy's layers alone would take

    raw(keep) = dense latency - sum_l (t_l(full widths) - t_l(widths_l(keep)))     [milliseconds]

where the dense latency is a measured forward pass of the whole model. Layers timed alone miss what a whole
network spends beside them (the ReLUs, residual adds and shortcuts on every activation, the memory traffic between
layers), so their savings are scaled,

    latency(keep) = dense latency - scale * (dense latency - raw(keep)),

with `scale` calibrated on whole models: the dense model and four models keeping about 3/4, 1/2, 1/4 and 1/8 of
every group (each group's share drawn within 20% of that, so that their widths are as uneven as a search's) are
timed together, and `scale` is the least-squares fit of their measured savings to their raw ones. One factor
fitted on four models, not a curve through them: whole-model latency is not a function of the layers' savings
alone (widths that are multiples of 8 run far faster than their neighbours in oneDNN's blocked kernels: on resnet56
at batch 64, channels-last, keeping 1/2 of every group ran at 0.33 of the dense latency and keeping 0.6 at 0.50),
and a curve through four such models follows their quirks (`bench/results/latency_table_resnet56*.md`). The table
is an estimate, good to about 0.05 of the dense latency on average on this model; a search times its final policy
for real (`fit_to_latency`). The table is a JSON object, so a run measures it once and reuses it on resume.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.utils.benchmark as benchmark

from amc.engine.budget import min_counts, ratio_counts, snap_counts
from amc.engine.groups import prune_copy
from amc.engine.measure import latencies, to_channels_last
from amc.engine.pruner import ChannelPruner

# the calibration models keep about these fractions of every group's channels
CALIBRATION_FRACTIONS = (0.75, 0.5, 0.25, 0.125)


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


def _width_grid(full: int, smallest: int, points: int, step: int = 1) -> list[int]:
    """`points` widths from `smallest` to `full` (ascending, whole, distinct), the inner ones multiples of `step`
    (the channel rounding: the widths policies will have)."""
    inner = np.linspace(smallest, full, points)[1:-1]
    inner = np.clip(np.round(inner / step) * step, smallest, full).astype(int)
    return np.unique([smallest, *inner.tolist(), full] if points > 1 else [full]).tolist()


class LatencyTable:
    """Latency in milliseconds of kept channel counts, from per-layer timings (see the module doc).

    `layers` holds, per timed layer: its name, the affine map from kept counts to its widths (`in0`, `in_cut`,
    `out0`, `out_cut`: width = w0 - sum_g cut[g] * (channels_g - keep_g)), the input and output widths measured
    (`in_grid`, `out_grid`, ascending) and `times_ms` [len(in_grid)][len(out_grid)]. `dense` is the whole model's
    latency, `calibration` the (raw, measured) milliseconds of the whole models timed to calibrate it and `scale`
    the factor fitted to them (module doc; 1.0 without calibration). The table holds for one batch size, CPU thread
    count and memory layout.
    """

    def __init__(self, full: list[int], layers: list[dict[str, Any]], dense: float, batch_size: int,
                 threads: int, channels_last: bool = False,
                 calibration: list[tuple[float, float]] | None = None) -> None:
        self.full, self.layers, self.dense = np.asarray(full, dtype=np.int64), layers, dense
        self.batch_size, self.threads, self.channels_last = batch_size, threads, channels_last
        self.calibration = [(float(r), float(m)) for r, m in calibration or []]
        # least squares of the measured savings on the raw ones, through the dense model; a non-positive fit (noise
        # swamping the savings) would make cost fall with width, so it falls back to the raw savings
        raw = np.array([self.dense - r for r, _ in self.calibration])
        measured = np.array([self.dense - m for _, m in self.calibration])
        fit = float(raw @ measured / (raw @ raw)) if len(raw) and raw @ raw > 0 else 1.0
        self.scale = fit if fit > 0 else 1.0
        # the layers as arrays once: the search calls the table on every step
        self._arrays = [tuple(np.asarray(layer[key], dtype=np.float64)
                              for key in ("in0", "in_cut", "out0", "out_cut", "in_grid", "out_grid", "times_ms"))
                        for layer in layers]

    @classmethod
    def measure(cls, pruner: ChannelPruner, *, batch_size: int = 1, channels_last: bool = False, points: int = 5,
                threads: int | None = None, min_run_time: float = 0.05,
                progress: Callable[[int, int], None] | None = None) -> LatencyTable:
        """Time every narrowed layer at `points` widths per narrowed side on the device of the pruner's model (batch
        `batch_size`, channels-last layout for image models if `channels_last`). `progress(done, total)` is called
        after each layer and after the whole models (e.g. to move a progress bar)."""
        threads = threads or torch.get_num_threads()
        device = next(pruner.model.parameters()).device
        modules = dict(pruner.model.named_modules())
        in0, in_cut, out0, out_cut = pruner.cost.width_map()
        names = sorted(pruner.layers, key=lambda n: pruner.layers[n].order)
        smallest = pruner.cost.widths(min_counts(pruner))
        layers = []
        report = progress or (lambda done, total: None)
        for i, name in enumerate(names):
            report(i, len(names) + 1)
            if not (in_cut[i].any() or out_cut[i].any()):
                continue  # no group narrows it: its time is part of the constant rest
            step = pruner.channel_round
            in_grid = _width_grid(int(in0[i]), int(smallest[0][i]), points if in_cut[i].any() else 1, step)
            out_grid = _width_grid(int(out0[i]), int(smallest[1][i]), points if out_cut[i].any() else 1, step)
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
        # the calibration models, timed with the dense model in the same rounds
        # each group's preserve ratio drawn around the fraction: widths like a search's, not only round ones (a
        # width that is a multiple of 8 may run far faster than its neighbours)
        rng = np.random.default_rng(0)
        kept = [ratio_counts(pruner, f * rng.uniform(0.8, 1.2, len(pruner.groups))) for f in CALIBRATION_FRACTIONS]
        models = [pruner.model, *(narrowed_copy(pruner, k) for k in kept)]
        dense, *measured = latencies(models, pruner.input_shape, batch_size, threads=threads, repeats=5,
                                     channels_last=channels_last, device=device)
        report(len(names) + 1, len(names) + 1)
        raw = cls(pruner.channels.tolist(), layers, dense, batch_size, threads, channels_last)
        calibration = [(float(raw.raw(k)), m) for k, m in zip(kept, measured)]
        return cls(pruner.channels.tolist(), layers, dense, batch_size, threads, channels_last, calibration)

    def raw(self, keep: np.ndarray) -> np.ndarray:
        """The layers' own prediction (ms) for kept counts `keep` [..., G], before calibration; shape [...]."""
        removed = self.full - np.asarray(keep, dtype=np.float64)
        saved = np.zeros(removed.shape[:-1])
        for in0, in_cut, out0, out_cut, xs, ys, times in self._arrays:
            saved = saved + times[-1, -1] - _interp2(in0 - removed @ in_cut, out0 - removed @ out_cut, xs, ys, times)
        return self.dense - saved

    def __call__(self, keep: np.ndarray) -> np.ndarray:
        """Predicted latency (ms) of kept counts `keep` [..., G]; returns shape [...]."""
        return self.dense - self.scale * (self.dense - self.raw(keep))

    def to_dict(self) -> dict[str, Any]:
        return {"format": "amc-latency/3", "full": self.full.tolist(), "layers": self.layers, "dense_ms": self.dense,
                "calibration": [list(p) for p in self.calibration], "batch_size": self.batch_size,
                "threads": self.threads, "channels_last": self.channels_last}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyTable:
        """The table of `to_dict`.

        Raises:
            ValueError: a table of another format (an older amc's per-group table): measure it again.
        """
        if data.get("format") != "amc-latency/3":
            raise ValueError("a latency table of another format (measure it again)")
        return cls(data["full"], data["layers"], data["dense_ms"], data["batch_size"], data["threads"],
                   data.get("channels_last", False), [tuple(p) for p in data["calibration"]])


def narrowed_copy(pruner: ChannelPruner, keep: np.ndarray) -> nn.Module:
    """The model keeping the first `keep[g]` channels of each group: which channels does not change its time."""
    return prune_copy(pruner.model, pruner.groups, {g.name: torch.arange(int(n)) for g, n in zip(pruner.groups, keep)})


def measured_ratio(pruner: ChannelPruner, table: LatencyTable, keep: np.ndarray, repeats: int = 7) -> float:
    """The latency of kept counts `keep` [G] as a fraction of the dense model's, both timed as deployed in
    interleaved rounds (`latencies`) at the table's batch size, threads and layout."""
    device = next(pruner.model.parameters()).device
    dense, pruned = latencies([pruner.model, narrowed_copy(pruner, keep)], pruner.input_shape, table.batch_size,
                              threads=table.threads, repeats=repeats, channels_last=table.channels_last,
                              device=device)
    return pruned / dense


@dataclass
class LatencyFit:
    """What `fit_to_latency` found: kept counts `keep` [G], their measured latency ratio `measured`, the narrowing
    factor `factor` (1.0: the counts met the budget as given; 0.0: not even the smallest model meets it) and the
    given counts' measured ratio `first`."""

    keep: np.ndarray
    measured: float
    factor: float
    first: float


def fit_to_latency(pruner: ChannelPruner, table: LatencyTable, keep: np.ndarray, ratio: float,
                   steps: int = 6) -> LatencyFit:
    """Kept counts that meet a latency budget when timed, not only in the table's prediction.

    `keep` [G] is timed against the dense model (`measured_ratio`). When it runs slower than `ratio` of the dense
    latency, every group is narrowed by one factor f (kept = max(minimum, floor(f * keep))), the largest f that
    meets the budget found by bisection over `steps` timed candidates (f to 1 / 2**steps); when even the smallest
    model misses it, that model is returned with f = 0.
    """
    keep = np.asarray(keep, dtype=np.int64)
    first = measured_ratio(pruner, table, keep)
    if first <= ratio:
        return LatencyFit(keep, first, 1.0, first)
    smallest = min_counts(pruner)

    def shrunk(f: float) -> np.ndarray:
        return snap_counts(pruner, np.maximum(smallest, np.floor(f * keep)), down=True)

    lo, hi, best = 0.0, 1.0, None
    for _ in range(steps):
        mid = (lo + hi) / 2
        measured = measured_ratio(pruner, table, shrunk(mid))
        if measured <= ratio:
            lo, best = mid, LatencyFit(shrunk(mid), measured, mid, first)
        else:
            hi = mid
    return best or LatencyFit(smallest, measured_ratio(pruner, table, smallest), 0.0, first)
