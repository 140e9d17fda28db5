"""Channel ranking: which of a group's channels to keep first. One small ranker per criterion; each returns
the group's root channel indices, most important first (int64 [channels]); a policy keeping k channels
keeps the first k.

- `l1` / `l2`: norm of the consuming layers' weights over the channel (AMC's reference uses l1; Li et al.,
  "Pruning Filters for Efficient ConvNets", ICLR 2017);
- `bn`: absolute BatchNorm scale of the channel (Liu et al., "Learning Efficient Convolutional Networks
  through Network Slimming", ICCV 2017);
- `ls`: greedy least-squares elimination on calibration statistics (He et al., "Channel Pruning for
  Accelerating Very Deep Neural Networks", ICCV 2017), see `amc.engine.reconstruct.greedy_order`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn

from amc.engine.groups import ChannelGroup
from amc.engine.reconstruct import greedy_order


def _weight_scores(model: nn.Module, group: ChannelGroup, kind: str,
                   reduce: Callable[[torch.Tensor], torch.Tensor], per_channel: Callable) -> torch.Tensor:
    """Sum of `reduce(weight slice)` over the group's items of `kind`, per root channel (float64 [channels])."""
    modules = dict(model.named_modules())
    score = torch.zeros(group.channels, dtype=torch.float64)
    for item in group.items:
        if item.kind != kind:
            continue
        weight = modules[item.module].weight.detach().double().cpu()
        for idx, root in zip(item.idxs, item.root_idxs):
            score[root] += reduce(per_channel(weight, idx))
    return score


def l1_importance(model: nn.Module, group: ChannelGroup) -> torch.Tensor:
    """L1 norm of the consuming layers' weights over each root channel, float64 [channels]."""
    return _weight_scores(model, group, "in", lambda w: w.abs().sum(), lambda weight, i: weight[:, i])


def l2_importance(model: nn.Module, group: ChannelGroup) -> torch.Tensor:
    """Squared L2 norm of the consuming layers' weights over each root channel, float64 [channels]."""
    return _weight_scores(model, group, "in", lambda w: w.pow(2).sum(), lambda weight, i: weight[:, i])


def bn_importance(model: nn.Module, group: ChannelGroup) -> torch.Tensor:
    """Absolute BatchNorm scale (gamma) of each root channel, summed over the group's norms, float64 [channels]."""
    return _weight_scores(model, group, "norm", lambda w: w.abs().sum(), lambda weight, i: weight[i])


NORM_IMPORTANCE: dict[str, Callable[[nn.Module, ChannelGroup], torch.Tensor]] = {
    "l1": l1_importance,
    "l2": l2_importance,
    "bn": bn_importance,
}


def norm_ranking(model: nn.Module, group: ChannelGroup, criterion: str) -> torch.Tensor:
    """The group's root channels by a weight-norm criterion (`l1`, `l2`, `bn`), largest first; ties keep
    the lower index first."""
    return torch.argsort(NORM_IMPORTANCE[criterion](model, group), descending=True, stable=True)


def least_squares_ranking(consumer: nn.Module, gram: torch.Tensor, blocks: Sequence[torch.Tensor]) -> torch.Tensor:
    """The group's root channels by greedy least-squares elimination (`ls`): `consumer` is the layer reading
    the group, `gram` [D, D] the Gram matrix of its input, `blocks[c]` the columns of D fed by channel c
    (all of one size)."""
    weight = consumer.weight.detach()
    return greedy_order(weight.reshape(len(weight), -1), gram, torch.stack(list(blocks)))
