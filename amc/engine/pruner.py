"""The channel-pruning engine: one trained model analysed once, then pruned to any channel counts.

`ChannelPruner` holds what every policy needs: the verified groups, the exact cost model, each
group's channel ranking and (after `calibrate`) the Gram matrices for least-squares reconstruction.
Channels are ranked by least squares (`ls`, the default: greedy elimination of the channels whose
removal the re-fit compensates best, from the calibration statistics) or by a weight norm (`l1`, `l2`,
`bn`: no data needed).
`prune` turns kept channel counts into a physically smaller model with re-fitted consumers.
"""

from __future__ import annotations

import copy
import warnings
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn

from amc.engine import SELECTIONS, Selection
from amc.engine.cost import CostModel, count_macs_params
from amc.engine.groups import ChannelGroup, find_groups, prune_, prune_copy
from amc.engine.ranking import least_squares_ranking, norm_ranking
from amc.engine.reconstruct import collect_grams, refit
from amc.errors import AmcError


def _input_columns(layer: nn.Module, group: ChannelGroup) -> list[torch.Tensor]:
    """The columns of the consumer's flattened weight [O, D] fed by each root channel of `group`: a
    conv's k*k columns per input channel, every flattened feature of the channel for a Linear."""
    item = next(it for it in group.items if it.module == group.consumer)
    block = layer.weight[0, 0].numel()  # k*k input features per channel of a conv, 1 for Linear
    inputs: list[list[int]] = [[] for _ in range(group.channels)]
    for idx, root in zip(item.idxs, item.root_idxs):
        inputs[root].append(idx)
    return [(torch.tensor(idx, dtype=torch.long)[:, None] * block + torch.arange(block)).reshape(-1) for idx in inputs]


class ChannelPruner:
    """Analyse `model` once (groups, MAC/param model, channel ranking); prune it to any counts.

    `input_shape` is one input's (C, H, W). `selection` picks how channels are ranked; `ls` ranks
    only after `calibrate` (a group without a re-fittable consumer falls back to `l1`). `ignored` names layers
    whose output channels stay whole; with `channel_round` r > 1 policies keep multiples of r channels per group
    (or all of them; `amc.engine.budget.allowed_counts`).
    """

    def __init__(
        self,
        model: nn.Module,
        input_shape: Sequence[int],
        *,
        selection: Selection = "ls",
        ignored: Sequence[str] = (),
        channel_round: int = 1,
    ) -> None:
        if selection not in SELECTIONS:
            raise ValueError(f"unknown channel selection {selection!r}; choose one of {SELECTIONS}")
        if not (isinstance(channel_round, int) and channel_round >= 1):
            raise ValueError(f"channel_round must be a whole number >= 1, got {channel_round!r}")
        # kept counts are multiples of this (or a group's full width): `amc.engine.budget.allowed_counts`
        self.channel_round = channel_round
        self.model = model.eval()
        self.input_shape = tuple(int(d) for d in input_shape)
        example = torch.randn(4, *self.input_shape, generator=torch.Generator().manual_seed(0))
        self.groups, self.layers = find_groups(model, example, ignored=ignored)
        self.cost = CostModel(model, self.groups, self.layers)
        self._check_cost_model()
        self.selection = selection
        # `ls` needs calibration statistics: until `calibrate` (and for groups it cannot rank) it is l1.
        norm = "l1" if selection == "ls" else selection
        self.ranking = {g.name: norm_ranking(model, g, norm) for g in self.groups}
        self.grams: dict[str, torch.Tensor] = {}
        self.calibrated = False  # grams may stay empty after calibration: a model may have no re-fittable consumer
        modules = dict(model.named_modules())
        self.blocks = {g.name: _input_columns(modules[g.consumer], g) for g in self.groups if g.consumer is not None}

    def _check_cost_model(self) -> None:
        """Hold the analytic cost model to torch's operator-level count (`count_macs_params`) of the dense model
        and of a model physically pruned to a seeded random policy. MACs outside conv/Linear layers (attention
        products, ...) become the model's constant `other_macs`; any other difference would let a policy break
        the budget it claims to meet, so the model is refused.

        Raises:
            AmcError: the analytic MACs or parameters differ from the counted ones.
        """
        macs, params = count_macs_params(self.model, self.input_shape)
        self.cost.other_macs = macs - int(self.cost.macs(self.channels))
        problems = []
        if self.cost.other_macs < 0 or int(self.cost.params(self.channels)) != params:
            problems.append(f"dense model: {int(self.cost.macs(self.channels)):,} MACs / "
                            f"{int(self.cost.params(self.channels)):,} params predicted, {macs:,} / {params:,} counted")
        if self.groups and not problems:
            rng = np.random.default_rng(0)
            counts = np.array([rng.integers(g.min_keep, g.channels + 1) for g in self.groups])
            pruned = prune_copy(self.model, self.groups, {g.name: torch.arange(int(c)) for g, c in zip(self.groups, counts)})
            macs, params = count_macs_params(pruned, self.input_shape)
            if macs != int(self.cost.macs(counts)) or params != int(self.cost.params(counts)):
                problems.append(f"a pruned model: {int(self.cost.macs(counts)):,} MACs / {int(self.cost.params(counts)):,} "
                                f"params predicted, {macs:,} / {params:,} counted")
        if problems:
            raise AmcError(f"amc's cost model of this model disagrees with torch's count of its operations "
                           f"({problems[0]}), so it cannot keep a budget; it is refused rather than searched: "
                           "report the model to amc's developers")

    @property
    def names(self) -> list[str]:
        """Group names, in execution order."""
        return [g.name for g in self.groups]

    @property
    def consumers(self) -> list[str]:
        """The layers a re-fit reconstructs: each group's single consuming conv/Linear, in execution order."""
        return [g.consumer for g in self.groups if g.consumer is not None]

    @property
    def readers(self) -> list[str]:
        """Every conv/Linear that reads some group's channels, in execution order: the layers whose input pruning
        narrows, which the sequential re-fit reconstructs (a superset of `consumers`: a residual stream has one
        reader per block)."""
        names = {it.module for g in self.groups for it in g.items if it.kind == "in"}
        return sorted(names, key=lambda n: self.layers[n].order)

    @property
    def channels(self) -> np.ndarray:
        """Channels of every group in the unpruned model, shape [G]."""
        return self.cost.full

    def calibrate(self, batches: Iterable[torch.Tensor], *, positions: int = 10, seed: int = 0) -> None:
        """Collect the reconstruction statistics of every refittable consumer on calibration batches
        (normalized float inputs from the TRAIN split)."""
        self.grams = collect_grams(self.model, self.consumers, batches, positions=positions, seed=seed)
        self.calibrated = True
        if self.selection == "ls":
            modules = dict(self.model.named_modules())
            for group in self.groups:
                blocks = self.blocks.get(group.name, [])
                if blocks and len({len(b) for b in blocks}) == 1:
                    self.ranking[group.name] = least_squares_ranking(
                        modules[group.consumer], self.grams[group.consumer], blocks)

    def kept_indices(self, counts: np.ndarray | Sequence[int]) -> dict[str, torch.Tensor]:
        """The `counts[i]` highest-ranked channels of group i (counts: ints, shape [G], in `names` order),
        as sorted root-index tensors keyed by group name: the `kept_idx` argument of `prune`."""
        if self.selection == "ls" and not self.calibrated:
            raise RuntimeError("least-squares channel selection needs calibrate() first")
        counts = np.asarray(counts)
        if counts.shape != self.channels.shape:
            raise ValueError(f"counts has shape {counts.shape}; the model has {len(self.names)} groups")
        return {name: self.ranking[name][: int(n)].sort().values for name, n in zip(self.names, counts.tolist())}

    def keep_indices(self, counts: Mapping[str, int]) -> dict[str, torch.Tensor]:
        """Deprecated name of the first layout (counts by group name): use `kept_indices`."""
        warnings.warn("ChannelPruner.keep_indices is deprecated; use kept_indices(counts in group order)",
                      DeprecationWarning, stacklevel=2)
        full = [int(counts.get(name, channels)) for name, channels in zip(self.names, self.channels.tolist())]
        return {name: idx for name, idx in self.kept_indices(full).items() if name in counts}

    def kept_outputs(self, keep: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Original indices of the output channels each layer keeps under `keep` (sorted), for the layers
        that lose some; a layer absent from the result keeps all its outputs."""
        removed: dict[str, set[int]] = {}
        for group in self.groups:
            if group.name in keep:
                for (module, kind), idxs in group.removed_by_module(keep[group.name]).items():
                    if kind == "out" and idxs:
                        removed.setdefault(module, set()).update(idxs)
        return {name: torch.tensor(sorted(set(range(self.layers[name].out_channels)) - idxs))
                for name, idxs in removed.items()}

    def prune(self, keep: Mapping[str, torch.Tensor], *, reconstruct: bool = True) -> nn.Module:
        """A physically pruned copy keeping channels `keep[name]` (sorted root indices) per group.

        With `reconstruct`, each group's consumer is re-fitted by least squares first (needs
        `calibrate`); groups absent from `keep` stay whole.
        """
        if reconstruct and not self.calibrated:
            raise RuntimeError("call calibrate() before pruning with reconstruction")
        pruned = copy.deepcopy(self.model)
        if reconstruct:
            self._refit_consumers(pruned, keep)
        return prune_(pruned, self.groups, dict(keep))

    def _refit_consumers(self, model: nn.Module, keep: Mapping[str, torch.Tensor]) -> None:
        modules = dict(model.named_modules())
        for group in self.groups:
            if group.consumer is None or group.name not in keep or len(keep[group.name]) == group.channels:
                continue
            layer = modules[group.consumer]
            flat = layer.weight.detach().reshape(layer.weight.shape[0], -1)
            cols = torch.cat([self.blocks[group.name][i] for i in keep[group.name].tolist()]).sort().values
            with torch.no_grad():
                new = flat.clone()
                new[:, cols] = refit(flat, self.grams[group.consumer], cols)
                layer.weight.copy_(new.reshape(layer.weight.shape))
