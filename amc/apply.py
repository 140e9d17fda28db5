"""The last stage of the data flow: a policy applied to a trained model gives a physically smaller one.

`apply_policy(task, policy)` keeps each group's top-ranked channels as the policy says, exactly as the
search evaluated them (the same channel selection, the sequential least-squares re-fit and BatchNorm
re-estimation on the task's calibration images), and returns a `PrunedModel` to fine-tune
(`amc.train.finetune`), `.save(path)` as one file (`amc.load_model` reads it) or export (`amc.export`).
"""

from __future__ import annotations

import warnings

import torch

from amc.engine.pruner import ChannelPruner
from amc.errors import AmcError
from amc.models.pruned import PrunedModel
from amc.models.trained import TrainedModel
from amc.policy import Policy
from amc.reward import Task


def choose_selection(requested: str | None, recorded: str | None, *, has_data: bool) -> str:
    """The channel selection to apply a policy with: `requested` (the caller's), else the one the policy was
    searched with (`recorded`), else `ls`. Without data (no calibration images) `ls` is impossible: a
    weight norm is used, `l1` unless another was requested or recorded.

    Raises:
        AmcError: `ls` requested without data.
    """
    if has_data:
        return requested or recorded or "ls"
    if requested == "ls":
        raise AmcError("least-squares channel selection (ls) chooses channels on calibration images: "
                       "pass a dataset (--dataset and --data-dir)")
    if requested:
        return requested
    if recorded == "ls":
        warnings.warn("the policy was searched with least-squares channel selection, which needs a dataset; "
                      "keeping channels by l1 magnitude instead")
        return "l1"
    return recorded or "l1"


def apply_policy(source: Task | tuple[TrainedModel, ChannelPruner], policy: Policy) -> PrunedModel:
    """Prune a trained model to `policy`'s kept channel counts.

    Args:
        source: a prepared `Task` (channels chosen by its selection, then re-fitted and BatchNorm
            re-estimated on its calibration images, as `task.evaluator` scores a policy), or, with no data,
            a `(TrainedModel, ChannelPruner)` pair: channels by the pruner's weight-norm ranking, no re-fit.
        policy: kept channels per group (`Policy.counts_for` checks it fits the model).

    Returns:
        A `PrunedModel` in eval mode and contiguous memory layout; `.save(path)` writes it.

    Raises:
        AmcError: the policy does not fit the model (unknown group, wrong channels, keep out of range).
    """
    if isinstance(source, Task):
        trained, pruner = source.model, source.pruner
        counts = policy.counts_for(pruner)
        module = source.evaluator.prune(counts)
    else:
        trained, pruner = source
        counts = policy.counts_for(pruner)
        module = pruner.prune(pruner.kept_indices(counts), reconstruct=False)
    groups = {g.name: g for g in pruner.groups}  # kept channels of the producer, as the file records them
    kept = {name: groups[name].to_channels(idx).tolist() for name, idx in pruner.kept_indices(counts).items()}
    module = module.to(memory_format=torch.contiguous_format).eval()
    return PrunedModel(module, trained.spec, trained.num_classes, tuple(trained.input_shape), tuple(trained.mean),
                       tuple(trained.std), kept, policy.to_dict())
