"""Resource budgets and the channel counts that meet them.

A budget is a fraction of the dense model's MACs ("flops"), parameters ("params") or measured latency
("latency"). Costs are functions of the kept channel counts of every group, vectorised over leading
dimensions: `cost(keep[..., G]) -> [...]`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from amc.engine.pruner import ChannelPruner
from amc.errors import AmcError

BUDGET_KINDS: tuple[str, ...] = ("flops", "params", "latency")
CostFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Budget:
    """Keep at most `ratio` of the dense model's `kind` (MACs, parameters or latency)."""

    kind: str
    ratio: float

    def __post_init__(self) -> None:
        if self.kind not in BUDGET_KINDS:
            raise AmcError(f"unknown budget kind {self.kind!r}; use one of {', '.join(BUDGET_KINDS)}")
        if not (isinstance(self.ratio, (int, float)) and math.isfinite(self.ratio) and 0 < self.ratio <= 1):
            raise AmcError(f"budget ratio {self.ratio} is outside (0, 1]; pass e.g. --target-{self.kind} 0.5")

    def to_dict(self) -> dict:
        return {"kind": self.kind, "ratio": self.ratio}


def cost_function(pruner: ChannelPruner, kind: str, latency: CostFn | None = None) -> CostFn:
    """The cost of kept channel counts for a budget kind (MACs, parameters, or latency in ms)."""
    if kind == "flops":
        return pruner.cost.macs
    if kind == "params":
        return pruner.cost.params
    if latency is None:
        raise ValueError("a latency budget needs a latency table")
    return latency


def min_counts(pruner: ChannelPruner, lbound: float = 0.0, *, rounded: bool = True) -> np.ndarray:
    """The fewest channels per group a policy may keep: `lbound` of each group, at least `min_keep`, rounded up
    to `pruner.channel_round` (see `allowed_counts`; not with `rounded` False)."""
    floor = np.array([g.min_keep for g in pruner.groups], dtype=np.int64)
    low = np.maximum(floor, np.ceil(lbound * pruner.channels - 1e-9).astype(np.int64))
    r = pruner.channel_round if rounded else 1
    return low if r == 1 else np.minimum(-(-low // r) * r, pruner.channels)


def allowed_counts(pruner: ChannelPruner, lbound: float = 0.0) -> list[np.ndarray]:
    """Per group, the kept channel counts a policy may use, ascending: `min_counts` to the group's width; with
    `pruner.channel_round` r > 1 only the multiples of r among them and the full width (AMC's channel rounding,
    the reference code's `--channel_round`: CPU and GPU kernels run widths that are multiples of 8 much faster
    than the widths between them)."""
    r = pruner.channel_round
    out = []
    for low, full in zip(min_counts(pruner, lbound), pruner.channels):
        counts = np.arange(low, full + 1, dtype=np.int64)
        out.append(counts if r == 1 else counts[(counts % r == 0) | (counts == full)])
    return out


def snap_counts(pruner: ChannelPruner, counts: np.ndarray, lbound: float = 0.0, *, down: bool = False) -> np.ndarray:
    """Counts [G] moved to the nearest allowed ones (`allowed_counts`; ties to the smaller), or with `down` to the
    largest allowed one not above them (the smallest allowed where none is); int64 [G]."""
    counts = np.asarray(counts)
    out = np.empty(len(pruner.channels), dtype=np.int64)
    for g, allowed in enumerate(allowed_counts(pruner, lbound)):
        if down:
            below = allowed[allowed <= counts[g]]
            out[g] = below[-1] if len(below) else allowed[0]
        else:
            out[g] = allowed[np.argmin(np.abs(allowed - counts[g]))]
    return out


def round_channels(channels: float | np.ndarray) -> np.ndarray:
    """The one rounding of a fractional channel count (preserve ratio x channels) to whole channels: to the
    nearest integer, ties to even (`np.rint`); int64, same shape."""
    return np.rint(np.asarray(channels, dtype=np.float64)).astype(np.int64)


def ratio_counts(pruner: ChannelPruner, ratio: float | np.ndarray, lbound: float = 0.0) -> np.ndarray:
    """Channel counts for preserve ratios (one, or one per group), rounded, within the bounds (and on the
    `pruner.channel_round` grid)."""
    counts = np.clip(round_channels(np.asarray(ratio) * pruner.channels), min_counts(pruner, lbound), pruner.channels)
    return counts if pruner.channel_round == 1 else snap_counts(pruner, counts, lbound)


def check_reachable(pruner: ChannelPruner, cost: CostFn, budget: Budget, lbound: float = 0.0) -> float:
    """The budget's absolute target; AmcError if the model has no prunable group or even the smallest
    allowed model exceeds the budget."""
    if not pruner.groups:
        raise AmcError("the model has no prunable channel group (every conv and Linear is pinned, or there is none); "
                       "amc prunes the channels of convolutional and linear layers")
    dense = float(cost(pruner.channels))
    smallest = float(cost(min_counts(pruner, lbound))) / dense
    if budget.ratio < smallest:
        least = f"pass a budget of at least {math.ceil(smallest * 1000) / 1000:g}"
        r = pruner.channel_round
        if r > 1 and (pruner.channels <= r).all():
            raise AmcError(f"--channel-round {r} leaves no group prunable: the widest has {pruner.channels.max()} "
                           "channels and a group keeps a multiple of it or all of them; pass a smaller --channel-round")
        unrounded = float(cost(min_counts(pruner, lbound, rounded=False))) / dense
        if r > 1 and budget.ratio >= unrounded:  # the rounding, not the lower bound, is what stands in the way
            raise AmcError(f"a {budget.kind} budget of {budget.ratio:g} cannot be met with --channel-round {r}: every "
                           f"group keeps at least {r} channels (or all of a narrower one's), so the smallest model "
                           f"keeps {smallest:.3f}; pass a smaller --channel-round or {least}")
        # with --lbound 0 the floor is the layers pruning cannot narrow: only a larger budget helps
        smaller = " or a smaller --lbound" if lbound > 0 else " (the rest of the model is not prunable)"
        raise AmcError(
            f"a {budget.kind} budget of {budget.ratio:g} cannot be met: the smallest model the lower bound "
            f"{lbound:g} allows keeps {smallest:.3f}; {least}" + smaller
        )
    return budget.ratio * dense


def uniform_counts(pruner: ChannelPruner, cost: CostFn, target: float) -> np.ndarray:
    """The same preserve ratio for every group, as large as the budget `target` allows.

    Bisection on the ratio: with rounding to whole channels the cost is a non-decreasing step function
    of the ratio, so the largest feasible ratio is found to 1e-6.
    """
    lo, hi = 0.0, 1.0
    if cost(ratio_counts(pruner, hi)) <= target:
        return ratio_counts(pruner, hi)
    for _ in range(40):
        mid = (lo + hi) / 2
        if cost(ratio_counts(pruner, mid)) <= target:
            lo = mid
        else:
            hi = mid
    return ratio_counts(pruner, lo)
