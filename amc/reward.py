"""A pruning task: a trained model and its data, analysed once, with the fast reward evaluation.

`prepare_task` loads the model and checkpoint, splits the TRAIN set into a training part and a held-out
`val` part (search rewards are measured on `val`, never on `test`), builds the `ChannelPruner`,
collects reconstruction statistics on calibration images from the training part, and returns a
`RewardEvaluator` that scores channel counts: select channels, re-fit (sequentially, on the pruned
network's own inputs), re-estimate BatchNorm, measure accuracy on `val`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn as nn

from amc.data.datasets import Dataset, load_dataset
from amc.data.split import split_train_val
from amc.data.transforms import normalize
from amc.engine import Selection
from amc.engine.measure import accepts_channels_last, accuracy, to_channels_last
from amc.engine.memory import release_free_memory
from amc.engine.pruner import ChannelPruner
from amc.engine.reconstruct import Target, collect_targets, recalibrate_batchnorm, refit_sequentially
from amc.errors import AmcError
from amc.models.trained import TrainedModel, load_trained_model

Reconstruction = Literal["sequential", "gram", "none"]


@dataclass
class Evaluation:
    """Fast evaluation of one policy: val accuracy in [0, 1] and mean cross-entropy."""

    accuracy: float
    loss: float


class RewardEvaluator:
    """Scores kept channel counts by the accuracy of the pruned, re-fitted model on `val`.

    `val_x` [N, C, H, W] are normalized val images, `val_y` [N] labels; `refit_x` are normalized TRAIN
    images on which the pruned network is re-fitted and its BatchNorm statistics re-estimated (None:
    keep the original statistics). `reconstruct` picks the re-fit of the layers that consume pruned
    channels: `sequential` (the default; needs `refit_x`) re-fits the conv consumers in one pass of the
    pruned network over `refit_x`, on its own inputs, against the original outputs at `positions` sampled
    positions per image (Linear consumers keep the Gram re-fit); `gram` re-fits each layer from the
    original network's input statistics only (`ChannelPruner.calibrate`); `none` only selects channels.
    The pruned model is physically smaller, so a 50% budget costs about half a dense pass; images and
    model are kept channels-last (which runs CPU convolutions about 1.8x faster) when the model accepts it.
    """

    def __init__(self, pruner: ChannelPruner, val_x: torch.Tensor, val_y: torch.Tensor, *,
                 refit_x: torch.Tensor | None = None, reconstruct: Reconstruction = "sequential",
                 positions: int = 64, seed: int = 0) -> None:
        if reconstruct == "sequential" and refit_x is None:
            raise ValueError("the sequential re-fit needs calibration images (refit_x)")
        self.pruner, self.val_y, self.reconstruct = pruner, val_y, reconstruct
        # channels-last runs CPU convolutions about 1.8x faster, for the models that accept it
        self.channels_last = accepts_channels_last(pruner.model, pruner.input_shape)
        layout = to_channels_last if self.channels_last else (lambda x: x)
        self.val_x = layout(val_x)
        self.refit_x = None if refit_x is None else layout(refit_x)
        self.targets: dict[str, Target] = {}
        if reconstruct == "sequential":
            self.targets = collect_targets(pruner.model, pruner.consumers, self.refit_x, positions=positions, seed=seed)

    def prune(self, counts: np.ndarray) -> nn.Module:
        """The pruned model for kept counts `counts` [G] as evaluated (re-fitted, BatchNorm re-estimated)."""
        keep = self.pruner.kept_indices(counts)
        model = self.pruner.prune(keep, reconstruct=self.reconstruct != "none")
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.targets:
            refit_sequentially(model, self.targets, self.refit_x, self.pruner.kept_outputs(keep))
        elif self.refit_x is not None:
            recalibrate_batchnorm(model, self.refit_x)
        return model

    def __call__(self, counts: np.ndarray) -> Evaluation:
        acc, loss = accuracy(self.prune(counts), self.val_x, self.val_y)
        release_free_memory()  # the pruned copy is gone: keep a long search's memory flat (amc.engine.memory)
        return Evaluation(acc, loss)


@dataclass
class Task:
    """Everything a search or a baseline needs, built once by `prepare_task`; `settings` are the
    arguments it was prepared with (a search refuses a task prepared differently from its config)."""

    model: TrainedModel
    dataset: Dataset
    pruner: ChannelPruner
    evaluator: RewardEvaluator
    train_idx: torch.Tensor
    val_idx: torch.Tensor
    settings: dict[str, Any] = field(default_factory=dict)

    def test_accuracy(self, model: nn.Module) -> float:
        """Accuracy on the TEST split: for final reports only, never for choosing a policy."""
        test = self.dataset.test
        return accuracy(model, normalize(test.images, self.model.mean, self.model.std), test.labels)[0]


def _sample(idx: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return idx[torch.randperm(len(idx), generator=g)[: min(n, len(idx))]]


def prepare_task(
    model: str,
    checkpoint: str | Path | None,
    dataset: str,
    data_dir: str | Path | None = None,
    *,
    val_size: int | None = None,
    seed: int = 0,
    calib_size: int = 3000,
    refit_size: int = 256,
    positions: int = 10,
    selection: Selection = "ls",
    reconstruct: Reconstruction = "sequential",
) -> Task:
    """Load, split, analyse and calibrate: the one-time set-up of a search (see the module docstring).

    `val_size` images of the train split (default `default_val_size`) become the reward split;
    `calib_size` images of the rest feed the least-squares statistics (`positions` sampled output
    positions per image and layer) and `refit_size` of them re-fit the pruned network sequentially and
    re-estimate its BatchNorm (0 disables both; `reconstruct` as in `RewardEvaluator`). `selection` ranks
    the channels of each group (`ls`: least-squares greedy selection from the same statistics). The split
    depends only on `seed` and the dataset.
    """
    settings = dict(model=model, checkpoint=None if checkpoint is None else str(checkpoint), dataset=dataset,
                    data_dir=None if data_dir is None else str(data_dir), val_size=val_size, seed=seed,
                    calib_size=calib_size, refit_size=refit_size, positions=positions, selection=selection,
                    reconstruct=reconstruct)
    data = load_dataset(dataset, data_dir)
    trained = load_trained_model(model, checkpoint, dataset=data)
    train_idx, val_idx = split_train_val(len(data.train), val_size, seed)
    pruner = ChannelPruner(trained.module, trained.input_shape, selection=selection)
    if not pruner.groups:
        raise AmcError(f"model {model} has no prunable channel group; amc prunes conv and Linear channels")

    def norm(idx: torch.Tensor) -> torch.Tensor:
        return normalize(data.train.images[idx], trained.mean, trained.std)

    calib = norm(_sample(train_idx, calib_size, seed + 1))
    if reconstruct != "none" or selection == "ls":
        pruner.calibrate(calib.split(250), positions=positions, seed=seed)
    refit_x = norm(_sample(train_idx, refit_size, seed + 2)) if refit_size > 0 else None
    if refit_x is None and reconstruct == "sequential":
        reconstruct = "gram"
    evaluator = RewardEvaluator(pruner, norm(val_idx), data.train.labels[val_idx], refit_x=refit_x,
                                reconstruct=reconstruct, seed=seed + 3)
    return Task(trained, data, pruner, evaluator, train_idx, val_idx, settings)
