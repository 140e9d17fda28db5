"""Prunable channel groups of a CNN, found with Torch-Pruning's dependency graph and verified.

A *channel group* is a set of channels that must be removed together: the output channels of the
layer that produces them, the BatchNorm that normalises them, and the input channels of every layer
that consumes them (an input column block of a Linear after a flatten, the channels of a depthwise
conv in between, both branches of a residual add, a `ChannelMap` shortcut that carries them into the
next stage). Torch-Pruning's graph is the one source of truth for what is coupled; each group is then
checked once, because the graph is silently wrong on ops it does not know (a channel pad written with
`F.pad` merges the stages it joins): a physically pruned copy must equal a copy whose removed channels
are masked. Groups that fail are excluded with a warning.
"""

from __future__ import annotations

import copy
import warnings
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Iterator, Literal, Sequence

import torch
import torch.nn as nn
import torch_pruning as tp

from amc.engine.channel_map import ChannelMap, channel_map_pruners, traced_as_one_op
from amc.engine.hooks import forward_hooks
from amc.errors import AmcError, first

ItemKind = Literal["out", "in", "norm", "map_in", "map_out"]
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
_LAYERS = (nn.Conv2d, nn.Linear)


def is_depthwise(module: nn.Module) -> bool:
    """True for a conv whose every input channel has its own filter (groups == in == out > 1)."""
    return (
        isinstance(module, nn.Conv2d)
        and module.groups > 1
        and module.groups == module.in_channels == module.out_channels
    )


@dataclass
class GroupItem:
    """One coupled dimension of a group: a module and the indices it loses per root channel.

    `idxs[j]` is removed whenever root channel `root_idxs[j]` is removed. A Linear after a flatten has
    H*W input features per channel, so its item holds H*W indices per root channel.
    """

    module: str
    kind: ItemKind
    handler: Callable[[nn.Module, list[int]], nn.Module]
    idxs: list[int]
    root_idxs: list[int]

    def removed(self, root_removed: set[int]) -> list[int]:
        """Indices of this item removed when the root channels `root_removed` are removed."""
        return [i for i, r in zip(self.idxs, self.root_idxs) if r in root_removed]

    @property
    def per_channel(self) -> int:
        """Indices of this item per root channel (1, or H*W for a Linear after a flatten)."""
        return len(self.idxs) // len(set(self.root_idxs))


@dataclass
class LayerInfo:
    """Static description of a conv or Linear layer, measured on one forward pass.

    Shapes are per image: `in_hw` and `out_hw` are (H, W) of the input and output feature maps of its first
    call ((1, 1) for Linear). `order` is the position in execution order. `kernel_area` is kH * kW (1 for
    Linear); `positions` counts the outputs per image and channel over every call of the layer: H_out * W_out
    for a conv called once, the number of tokens for a Linear applied per token, summed over repeated calls.
    """

    name: str
    order: int
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    groups: int
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    kernel_area: int = 1
    positions: int = 1


@dataclass
class ChannelGroup:
    """A verified set of coupled channels, named by the module that produces them.

    `channels` is the number of prunable channels; a policy keeps between `min_keep` and `channels`.
    `consumer` is the single conv/Linear reading these channels, when there is exactly one that reads
    nothing else: the layer a least-squares refit can reconstruct. `producers` are the conv/Linear layers that
    write these channels (a depthwise conv in between only passes them on): more than one when residual adds
    join them, as in a residual stream (`residual_stream`).

    `sections` > 1 when the channels are split into that many equal sections that the model cuts apart by
    count (`torch.chunk`, the split / shuffle blocks of ShuffleNetV2, CSP, GhostNet): every section must keep
    as many channels as the others, so the group's unit is one channel of each section. `channels` then counts
    units, root index u standing for channels u, u + channels, u + 2 * channels, ... of the producer; the
    producer has `width` = channels * sections channels (`to_channels` / `to_units` convert kept indices).
    """

    name: str
    channels: int
    items: list[GroupItem]
    min_keep: int = 1
    consumer: str | None = None
    layers: list[str] = field(default_factory=list)
    sections: int = 1
    producers: list[str] = field(default_factory=list)

    @property
    def residual_stream(self) -> bool:
        """Whether residual adds join several producers' channels into this group (a stage's residual width)."""
        return len(self.producers) > 1

    @property
    def width(self) -> int:
        """The producer's channels: `channels` * `sections`."""
        return self.channels * self.sections

    def to_channels(self, units: torch.Tensor) -> torch.Tensor:
        """The producer's channel indices (sorted) of the kept units `units` (1-D long tensor)."""
        units = torch.as_tensor(units, dtype=torch.long)
        return (units[None, :] + self.channels * torch.arange(self.sections)[:, None]).reshape(-1).sort().values

    def to_units(self, channels: Sequence[int]) -> torch.Tensor:
        """The kept units of the producer's kept channel indices `channels`.

        Raises:
            AmcError: the indices are not whole units (a section keeps other channels than the rest).
        """
        kept = sorted({int(c) for c in channels})
        units = torch.tensor(sorted({c % self.channels for c in kept}), dtype=torch.long)
        if kept != self.to_channels(units).tolist() or any(not 0 <= c < self.width for c in kept):
            raise AmcError(f"group {self.name} is cut into {self.sections} equal sections: it keeps the same channels "
                           f"of each section, and {first([str(c) for c in kept])} are not such a set")
        return units

    def removed_by_module(self, keep: torch.Tensor) -> dict[tuple[str, ItemKind], list[int]]:
        """Indices each item loses when only root channels `keep` (1-D long tensor) are kept."""
        root_removed = set(range(self.channels)) - set(keep.tolist())
        return {(it.module, it.kind): it.removed(root_removed) for it in self.items}


def trace_layers(model: nn.Module, example: torch.Tensor) -> dict[str, LayerInfo]:
    """Run one forward pass and describe every Conv2d and Linear layer in execution order."""
    infos: dict[str, LayerInfo] = {}

    def hook(name: str) -> Callable:
        def record(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            x = inputs[0]
            # outputs per image and output channel of this call: every one of them costs a full dot product
            positions = output.numel() // (len(example) * output.shape[1 if isinstance(module, nn.Conv2d) else -1])
            if name in infos:  # a module called again (shared weights, a loop): its MACs count every time
                infos[name].positions += positions
                return
            if isinstance(module, nn.Conv2d):
                infos[name] = LayerInfo(
                    name, len(infos), module.in_channels, module.out_channels, module.kernel_size[0],
                    module.stride[0], module.groups, tuple(x.shape[-2:]), tuple(output.shape[-2:]),
                    module.kernel_size[0] * module.kernel_size[1], positions,
                )
            else:
                infos[name] = LayerInfo(
                    name, len(infos), module.in_features, module.out_features, 1, 1, 1, (1, 1), (1, 1), 1, positions
                )
        return record

    with forward_hooks({m: hook(n) for n, m in model.named_modules() if isinstance(m, _LAYERS)}), torch.no_grad():
        model(example)
    return infos


def _module_names(model: nn.Module) -> dict[nn.Module, str]:
    return {m: n for n, m in model.named_modules()}


def prune_(model: nn.Module, groups: Sequence[ChannelGroup], keep: dict[str, torch.Tensor]) -> nn.Module:
    """Physically remove, in place, the channels not in `keep[group.name]`; returns `model`.

    `keep` maps group names to 1-D long tensors of kept root channel indices; groups absent from it
    are left whole. All indices refer to the original model, so removals are merged per module and
    applied once (pruning one group must not shift the indices of another on a shared layer).
    Pruning replaces Parameter objects: build optimizers afterwards.
    """
    modules = dict(model.named_modules())
    removals: dict[tuple[str, Callable], set[int]] = defaultdict(set)
    for group in groups:
        if group.name not in keep:
            continue
        root_removed = set(range(group.channels)) - set(keep[group.name].tolist())
        for item in group.items:
            removals[(item.module, item.handler)].update(item.removed(root_removed))
    for (name, handler), idxs in removals.items():
        if idxs:
            handler(modules[name], sorted(idxs))
    return model


def prune_copy(model: nn.Module, groups: Sequence[ChannelGroup], keep: dict[str, torch.Tensor]) -> nn.Module:
    """A deep copy of `model` with the channels not in `keep` physically removed (see `prune_`)."""
    return prune_(copy.deepcopy(model), groups, keep)


def mask_copy(model: nn.Module, groups: Sequence[ChannelGroup], keep: dict[str, torch.Tensor]) -> nn.Module:
    """A deep copy of `model` in which removed channels are zeroed where they are consumed.

    Zeroing the input weights of every consuming conv/Linear makes the removed channels invisible to
    the rest of the network, which is exactly what physical removal must reproduce.
    """
    masked = copy.deepcopy(model)
    modules = dict(masked.named_modules())
    with torch.no_grad():
        for group in groups:
            if group.name in keep:
                _zero_consumed(modules, group, keep[group.name], [])
    return masked


def _zero_consumed(modules: dict[str, nn.Module], group: ChannelGroup, kept: torch.Tensor,
                   undo: list[Callable[[], None]]) -> None:
    """Zero the consuming weights of the group's removed channels in place (under no_grad), and stop the
    shortcuts that carry them on (`ChannelMap.mask_inputs`), appending to `undo` a call that reverts each
    change."""
    for (name, kind), idxs in group.removed_by_module(kept).items():
        if kind == "in" and idxs:
            weight = modules[name].weight
            undo.append(partial(weight.__setitem__, (slice(None), idxs), weight[:, idxs].clone()))
            weight[:, idxs] = 0.0
        elif kind == "map_in" and idxs:
            shortcut = modules[name]
            undo.append(partial(shortcut.set_index, shortcut.index.clone()))
            shortcut.mask_inputs(idxs)


@contextmanager
def _masked(model: nn.Module, group: ChannelGroup, kept: torch.Tensor) -> Iterator[None]:
    """`model` as `mask_copy` makes it, for the block: masked in place, and restored afterwards."""
    undo: list[Callable[[], None]] = []
    with torch.no_grad():
        try:
            _zero_consumed(dict(model.named_modules()), group, kept, undo)
            yield
        finally:
            for revert in reversed(undo):
                revert()


def _classify(dg: tp.DependencyGraph, module: nn.Module, handler: Callable) -> ItemKind | None:
    """Item kind of a (module, handler) pair, or None for an unsupported module type."""
    if isinstance(module, _NORMS):
        return "norm"
    if isinstance(module, ChannelMap):
        return "map_out" if dg.is_out_channel_pruning_fn(handler) else "map_in"
    if is_depthwise(module):
        return "out"
    if isinstance(module, _LAYERS):
        return "out" if dg.is_out_channel_pruning_fn(handler) else "in"
    return None


def _build_group(
    dg: tp.DependencyGraph, tp_group: tp.Group, names: dict[nn.Module, str], layers: dict[str, LayerInfo]
) -> ChannelGroup | str:
    """Turn a Torch-Pruning group into a ChannelGroup, or return why it is not supported."""
    root = tp_group[0].dep.target.module
    channels = len(tp_group[0].idxs)
    items: list[GroupItem] = []
    sections = 1
    for tp_item in tp_group.items:
        dep, module = tp_item.dep, tp_item.dep.target.module
        if isinstance(module, nn.Parameter):
            return "it touches a bare nn.Parameter"
        if isinstance(module, tp.ops._SplitOp) and sum(module.split_sizes or ()) == channels:
            sizes = list(module.split_sizes)
            if len(set(sizes)) > 1:
                return f"it is split into sections of different sizes {sizes}"
            sections = max(sections, len(sizes))
        if module not in names:
            continue  # a functional op (add, cat, flatten, split): nothing to prune in the module tree
        kind = _classify(dg, module, dep.handler)
        if kind is None:
            if any(True for _ in module.parameters(recurse=False)):
                return f"it touches {type(module).__name__} {names[module]}, which amc cannot prune"
            continue
        if isinstance(module, nn.Conv2d) and module.groups > 1 and not is_depthwise(module):
            return f"it touches grouped conv {names[module]}"
        items.append(GroupItem(names[module], kind, dep.handler, list(tp_item.idxs), list(tp_item.root_idxs)))
    consumers = [it.module for it in items if it.kind == "in"]
    producers = [it.module for it in items if it.kind == "out" and not is_depthwise(dg.model.get_submodule(it.module))]
    consumer = None
    if len(consumers) == 1:
        c = consumers[0]
        # a refit needs the consumer's whole input to be this group's channels
        if layers[c].in_channels == channels * next(it.per_channel for it in items if it.module == c):
            consumer = c
    depthwise = any(is_depthwise(dg.model.get_submodule(it.module)) for it in items)
    touched = sorted({it.module for it in items if it.module in layers}, key=lambda n: layers[n].order)
    if sections > 1:  # one unit = the same channel of every section (see ChannelGroup)
        channels //= sections
        for item in items:
            item.root_idxs = [r % channels for r in item.root_idxs]
        consumer = None  # several consumers read the sections
    return ChannelGroup(
        name=names[root] if root in names else producers[0],
        channels=channels,
        items=items,
        min_keep=min(2 if depthwise else 1, channels),
        consumer=consumer,
        layers=touched,
        sections=sections,
        producers=producers,
    )


def _keep_patterns(group: ChannelGroup, seed: int) -> list[torch.Tensor]:
    """Kept channel sets that a wrong index map cannot pass: the lower half, the upper half, and a seeded random
    subset of random size (an op that splits, shifts, shuffles or swaps channels maps at least one of them to the
    wrong channels or sizes). Each keeps at least `min_keep` and removes at least one."""
    n, low = group.channels, max(1, group.min_keep)
    if n <= low:
        return []
    half = max(low, n // 2)
    generator = torch.Generator().manual_seed(seed)
    size = int(torch.randint(low, n, (1,), generator=generator))
    patterns = [torch.arange(half), torch.arange(n - half, n), torch.randperm(n, generator=generator)[:size].sort().values]
    out = []
    for keep in patterns:
        if len(keep) < low:
            keep = torch.arange(low)
        if len(keep) < n and not any(torch.equal(keep, seen) for seen in out):
            out.append(keep)
    return out


def verify_group(model: nn.Module, group: ChannelGroup, example: torch.Tensor, seed: int = 0) -> str | None:
    """Check that pruning `group` physically equals masking it; return why not, or None if it does.

    Several kept sets are tried (`_keep_patterns`): symmetric ones alone cannot expose an operation that
    splits the channels (e.g. `torch.chunk` into two branches), since every half then looks the same.
    `example` is a small input batch.
    """
    example = example[:2]  # three kept sets at two images cost about what one set at four did
    for kept in _keep_patterns(group, seed):
        keep = {group.name: kept}
        try:
            pruned = prune_copy(model, [group], keep)
            with torch.no_grad():
                got = pruned(example)
                with _masked(model, group, kept):  # in place and undone: a copy per pattern would cost more
                    want = model(example)
        except Exception as exc:  # a wrongly coupled group breaks shapes: that is the failure we look for
            detail = " ".join(str(exc).split())[:80]
            return (f"removing its channels breaks the forward pass ({type(exc).__name__}: {detail}): they are "
                    "coupled through an operation the dependency graph does not see, e.g. a zero-padding shortcut "
                    "or a split of the channels")
        if got.shape != want.shape:
            return f"the pruned copy's output has shape {tuple(got.shape)} instead of {tuple(want.shape)}"
        err = (got - want).abs().max().item()
        if not err <= 1e-4 * (1.0 + want.abs().max().item()):
            return (f"the pruned copy differs from the masked original by {err:.3g} when it keeps {len(kept)} of "
                    f"{group.channels} channels: they are coupled through an operation the dependency graph does "
                    "not map correctly (e.g. a split of the channels)")
    return None


def layer_names(text: str) -> list[str]:
    """The layer names of a comma-separated list (the `--ignore` flag), blanks dropped."""
    return [name.strip() for name in text.split(",") if name.strip()]


def find_groups(
    model: nn.Module,
    example: torch.Tensor,
    *,
    ignored: Sequence[str] = (),
    verify: bool = True,
) -> tuple[list[ChannelGroup], dict[str, LayerInfo]]:
    """Find the prunable channel groups of `model`, verified, in execution order.

    `example` is an input batch (e.g. [4, 3, 32, 32]); the layer producing the network's output is never pruned,
    and a group that would narrow the output of a layer named in `ignored` is left out (a residual stream with
    one of its producers). Returns the groups and the traced layer table. Groups that fail verification are
    excluded with a warning naming the reason.

    Raises:
        AmcError: a name in `ignored` that is not a conv or Linear layer of the model.
    """
    model.eval()
    layers = trace_layers(model, example)
    if not layers:
        raise AmcError("the model has no Conv2d or Linear layer, so nothing for amc to prune; "
                       "amc prunes the channels of convolutional and linear layers")
    output_layer = max(layers.values(), key=lambda info: info.order).name
    unknown = [n for n in ignored if n not in layers]
    if unknown:
        which = "which is not a conv or Linear layer" if len(unknown) == 1 else "which are not conv or Linear layers"
        raise AmcError(f"--ignore names {first(unknown)}, {which} of the model; "
                       "`amc profile --json` lists the layers of each channel group")
    skip = [model.get_submodule(output_layer)]
    names = _module_names(model)
    with torch.enable_grad(), traced_as_one_op():
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=example[:1], verbose=False,
                                                   customized_pruners=channel_map_pruners(model))
    groups: list[ChannelGroup] = []
    seen: set[str] = set()  # layers whose output channels some group, kept or excluded with a warning, covers
    for tp_group in dg.get_all_groups(ignored_layers=skip, root_module_types=_LAYERS):
        seen.update(names[it.dep.target.module] for it in tp_group.items if it.dep.target.module in names)
        built = _build_group(dg, tp_group, names, layers)
        if isinstance(built, str):
            warnings.warn(f"channel group {names.get(tp_group[0].dep.target.module)} excluded: {built}")
            continue
        if any(it.kind == "out" and it.module in ignored for it in built.items):
            continue  # the user keeps these layers whole
        reason = verify_group(model, built, example, seed=len(groups)) if verify else None
        if reason is not None:
            warnings.warn(f"channel group {built.name} excluded: {reason}")
            continue
        groups.append(built)
    # a layer whose channels no group covers would otherwise drop out of the search without a word
    silent = [n for n, info in layers.items() if n not in seen and n != output_layer and n not in ignored
              and not is_depthwise(model.get_submodule(n))]
    if silent:
        warnings.warn(f"{len(silent)} layer(s) have no prunable channel group and keep their width: {first(silent)} "
                      "(the dependency graph found none for them)")
    model.eval()
    groups.sort(key=lambda g: layers[g.name].order if g.name in layers else len(layers))
    return groups, layers
