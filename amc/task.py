"""A pruning task: a trained model and its data, analysed once, with the fast reward evaluation.

`prepare_task` loads the model and checkpoint, splits the TRAIN set into a training part and a held-out
`val` part (search rewards are measured on `val`, never on `test`), builds the `ChannelPruner`,
collects reconstruction statistics on calibration images from the training part, and returns a
`RewardEvaluator` that scores channel counts: select channels, re-fit (sequentially, on the pruned
network's own inputs), re-estimate BatchNorm, measure accuracy on `val`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch
import torch.nn as nn

from amc.augment import normalize, to_channels_last
from amc.data import Dataset, default_val_size, load_dataset, split_train_val
from amc.errors import AmcError
from amc.evaluate import accuracy, recalibrate_batchnorm
from amc.models import create_model, load_checkpoint, read_checkpoint
from amc.pruner import ChannelPruner, Selection
from amc.reconstruct import Target, collect_targets, refit_sequentially

Reconstruction = Literal["sequential", "gram", "none"]


@dataclass
class TrainedModel:
    """A model with the facts needed to feed it: `spec` (registry name or factory), input shape
    (C, H, W), per-channel `mean` / `std` of inputs scaled to [0, 1], and the number of classes."""

    module: nn.Module
    spec: str
    num_classes: int | None
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]


def load_trained_model(
    spec: str,
    checkpoint: str | Path | None,
    *,
    dataset: Dataset | None = None,
    input_shape: Sequence[int] = (3, 32, 32),
) -> TrainedModel:
    """Build `spec` and load `checkpoint`; checkpoint metadata (num_classes, mean, std) wins over the
    dataset's defaults. Without a dataset, `input_shape` is used and mean/std are 0/1."""
    meta: dict = {}
    if checkpoint is not None:
        _, meta = read_checkpoint(checkpoint)
    num_classes = meta.get("num_classes") or (dataset.num_classes if dataset else None)
    module = create_model(spec, num_classes)
    if checkpoint is not None:
        load_checkpoint(module, checkpoint, spec)
    channels = dataset.image_shape[0] if dataset else input_shape[0]
    mean = tuple(meta.get("mean") or (dataset.mean if dataset else (0.0,) * channels))
    std = tuple(meta.get("std") or (dataset.std if dataset else (1.0,) * channels))
    shape = tuple(dataset.image_shape) if dataset else tuple(int(d) for d in input_shape)
    return TrainedModel(module.eval(), spec, num_classes, shape, mean, std)


@dataclass
class Evaluation:
    """Fast evaluation of one policy: val accuracy in [0, 1] and mean cross-entropy."""

    accuracy: float
    loss: float


class RewardEvaluator:
    """Scores kept channel counts by the accuracy of the pruned, re-fitted model on `val`.

    `val_x` [N, C, H, W] are normalized val images, `val_y` [N] labels; `bn_x` are normalized TRAIN
    images on which the pruned network is re-fitted and its BatchNorm statistics re-estimated (None:
    keep the original statistics). `reconstruct` picks the re-fit of the layers that consume pruned
    channels: `sequential` (the default; needs `bn_x`) re-fits the conv consumers in one pass of the
    pruned network over `bn_x`, on its own inputs, against the original outputs at `positions` sampled
    positions per image (Linear consumers keep the Gram re-fit); `gram` re-fits each layer from the
    original network's input statistics only (`ChannelPruner.calibrate`); `none` only selects channels.
    The pruned model is physically smaller, so a 50% budget costs about half a dense pass; images and
    model are kept channels-last, which runs CPU convolutions about 1.8x faster.
    """

    def __init__(self, pruner: ChannelPruner, val_x: torch.Tensor, val_y: torch.Tensor, *,
                 bn_x: torch.Tensor | None = None, reconstruct: Reconstruction = "sequential",
                 positions: int = 64, seed: int = 0) -> None:
        if reconstruct == "sequential" and bn_x is None:
            raise ValueError("the sequential re-fit needs calibration images (bn_x)")
        self.pruner, self.val_y, self.reconstruct = pruner, val_y, reconstruct
        self.val_x = to_channels_last(val_x)
        self.bn_x = None if bn_x is None else to_channels_last(bn_x)
        self.targets: dict[str, Target] = {}
        if reconstruct == "sequential":
            self.targets = collect_targets(pruner.model, pruner.consumers, self.bn_x, positions=positions, seed=seed)

    def prune(self, counts: np.ndarray) -> nn.Module:
        """The pruned model for kept counts `counts` [G] as evaluated (re-fitted, BatchNorm re-estimated)."""
        keep = self.pruner.keep_indices(dict(zip(self.pruner.names, counts.tolist())))
        model = self.pruner.prune(keep, reconstruct=self.reconstruct != "none")
        if self.val_x.dim() == 4:
            model = model.to(memory_format=torch.channels_last)
        if self.targets:
            refit_sequentially(model, self.targets, self.bn_x, self.pruner.kept_outputs(keep))
        elif self.bn_x is not None:
            recalibrate_batchnorm(model, self.bn_x)
        return model

    def __call__(self, counts: np.ndarray) -> Evaluation:
        acc, loss = accuracy(self.prune(counts), self.val_x, self.val_y)
        return Evaluation(acc, loss)


@dataclass
class Task:
    """Everything a search or a baseline needs, built once by `prepare_task`."""

    model: TrainedModel
    dataset: Dataset
    pruner: ChannelPruner
    evaluator: RewardEvaluator
    train_idx: torch.Tensor
    val_idx: torch.Tensor

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
    bn_size: int = 256,
    positions: int = 10,
    selection: Selection = "ls",
    reconstruct: Reconstruction = "sequential",
) -> Task:
    """Load, split, analyse and calibrate: the one-time set-up of a search (see the module docstring).

    `val_size` images of the train split (default `default_val_size`) become the reward split;
    `calib_size` images of the rest feed the least-squares statistics (`positions` sampled output
    positions per image and layer) and `bn_size` of them re-fit the pruned network sequentially and
    re-estimate its BatchNorm (0 disables both; `reconstruct` as in `RewardEvaluator`). `selection` ranks
    the channels of each group (`ls`: least-squares greedy selection from the same statistics). The split
    depends only on `seed` and the dataset.
    """
    data = load_dataset(dataset, data_dir)
    trained = load_trained_model(model, checkpoint, dataset=data)
    n_train = len(data.train)
    val_size = default_val_size(n_train) if val_size is None else val_size
    train_idx, val_idx = split_train_val(n_train, val_size, seed)
    if len(train_idx) == 0:
        raise AmcError(f"--val-size {val_size} leaves no training images for calibration; pass a smaller --val-size")
    pruner = ChannelPruner(trained.module, trained.input_shape, selection=selection)
    if not pruner.groups:
        raise AmcError(f"model {model} has no prunable channel group; amc prunes conv and Linear channels")

    def norm(idx: torch.Tensor) -> torch.Tensor:
        return normalize(data.train.images[idx], trained.mean, trained.std)

    calib = norm(_sample(train_idx, calib_size, seed + 1))
    if reconstruct != "none" or selection == "ls":
        pruner.calibrate(calib.split(250), positions=positions, seed=seed)
    bn_x = norm(_sample(train_idx, bn_size, seed + 2)) if bn_size > 0 else None
    if bn_x is None and reconstruct == "sequential":
        reconstruct = "gram"
    evaluator = RewardEvaluator(pruner, norm(val_idx), data.train.labels[val_idx], bn_x=bn_x,
                                reconstruct=reconstruct, seed=seed + 3)
    return Task(trained, data, pruner, evaluator, train_idx, val_idx)
