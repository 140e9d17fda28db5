"""A pruning task: a trained model and its data, analysed once, with the fast reward evaluation.

`prepare_task` loads the model and checkpoint, splits the TRAIN set into a training part and a held-out
`val` part (search rewards are measured on `val`, never on `test`), builds the `ChannelPruner`,
collects reconstruction statistics on calibration images from the training part, and returns a
`RewardEvaluator` that scores channel counts: select channels, re-fit (sequentially, on the pruned
network's own inputs), re-estimate BatchNorm, measure accuracy on `val`. A second held-out set, the selection
split, is kept apart from `val`: a search chooses its final policy among its best candidates there
(`agents.selection`), so the choice is not biased by the noise of the rewards that made them candidates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn as nn

from amc.data.datasets import Dataset, ImageSet, Split, batches, load_dataset, load_labelled_folder
from amc.data.split import split_train_val
from amc.data.transforms import normalize
from amc.engine import Selection
from amc.engine.device import fast_dtype, resolve_device
from amc.engine.groups import layer_names
from amc.engine.measure import (
    accepts_channels_last,
    batch_size_for,
    correct_and_loss,
    fold_batchnorm,
)
from amc.engine.memory import release_free_memory
from amc.engine.pruner import ChannelPruner
from amc.engine.reconstruct import Target, collect_targets, recalibrate_batchnorm, refit_sequentially
from amc.errors import AmcError
from amc.models.trained import TrainedModel, load_trained_model

Reconstruction = Literal["sequential", "gram", "none"]


@dataclass
class Evaluation:
    """Fast evaluation of one policy: val accuracy in [0, 1], mean cross-entropy, and the number of val images
    it was measured on (all of them, or fewer when a `RacingReward` stopped early: then `accuracy` is the race's
    estimate of the accuracy on all of val and `measured` the accuracy on the images it saw)."""

    accuracy: float
    loss: float
    images: int = 0
    measured: float | None = None


class RewardEvaluator:
    """Scores kept channel counts by the accuracy of the pruned, re-fitted model on `val`.

    `val_x` [N, C, H, W] are normalized val images, `val_y` [N] labels; `refit_x` are normalized TRAIN
    images on which the pruned network is re-fitted and its BatchNorm statistics re-estimated (None:
    keep the original statistics). `reconstruct` picks the re-fit of the layers that consume pruned
    channels: `sequential` (the default; needs `refit_x`) re-fits every conv that reads pruned channels
    (`ChannelPruner.readers`: each block of a residual stream) in one pass of the pruned network over `refit_x`,
    on its own inputs, against the original outputs at `positions` sampled
    positions per image (Linear consumers keep the Gram re-fit); `gram` re-fits each layer from the
    original network's input statistics only (`ChannelPruner.calibrate`); `none` only selects channels.

    Everything runs on the device of the pruner's model. The accuracy pass runs the pruned model as it is
    deployed: physically smaller, BatchNorm folded into the convs (where `torch.fx` traces the model),
    channels-last when the model accepts it, in `dtype` (default `amc.engine.device.fast_dtype`: bfloat16 where
    the hardware computes it natively, else float32; the re-fit and BatchNorm statistics stay float32). The val
    images are held in a seeded random order, so any prefix of them is a uniform sample (`RacingReward`).
    `select_x` [M, C, H, W] and `select_y` [M] are the selection split (normalized; None or empty: none), scored
    only by `rescore`.
    """

    def __init__(self, pruner: ChannelPruner, val_x: torch.Tensor, val_y: torch.Tensor, *,
                 refit_x: torch.Tensor | None = None, reconstruct: Reconstruction = "sequential",
                 positions: int = 64, seed: int = 0, dtype: torch.dtype | None = None,
                 select_x: torch.Tensor | None = None, select_y: torch.Tensor | None = None) -> None:
        if reconstruct == "sequential" and refit_x is None:
            raise ValueError("the sequential re-fit needs calibration images (refit_x)")
        self.pruner, self.reconstruct = pruner, reconstruct
        self.device = next(pruner.model.parameters()).device
        self.dtype = fast_dtype(self.device) if dtype is None else dtype
        # channels-last runs CPU convolutions about 1.8x faster, for the models that accept it
        self.channels_last = accepts_channels_last(pruner.model, pruner.input_shape)
        self.refit_x = None if refit_x is None else self._arranged(refit_x)
        self.targets: dict[str, Target] = {}
        if reconstruct == "sequential":  # before the splits are copied: its forward pass is a peak of memory too
            self.targets = collect_targets(pruner.model, pruner.readers, self.refit_x, positions=positions, seed=seed)
        order = torch.randperm(len(val_x), generator=torch.Generator().manual_seed(seed))
        self.val_x, self.val_y = self._arranged(val_x, order), val_y[order].to(self.device)
        empty = select_y is None or not len(select_y)  # one way to say "no selection split": None
        self.select_x = None if empty else self._arranged(select_x)
        self.select_y = None if empty else select_y.to(self.device)
        self._foldable = True

    def _arranged(self, x: torch.Tensor, order: torch.Tensor | None = None) -> torch.Tensor:
        """`x[order]` on the evaluator's device in its memory layout, copied a slice at a time (or `x` itself when
        it is already so): at 224x224 a split is gigabytes, and indexing, moving and changing the layout one after
        the other would hold up to three copies of it at once."""
        layout = torch.channels_last if self.channels_last and x.dim() == 4 else torch.contiguous_format
        if order is None and x.device == self.device and x.is_contiguous(memory_format=layout):
            return x
        out = torch.empty(x.shape, dtype=x.dtype, device=self.device, memory_format=layout)
        step = batch_size_for(x.shape[1:], "cpu")
        for start in range(0, len(x), step):
            part = slice(start, start + step)
            out[part] = x[part if order is None else order[part]]
        return out

    def prune(self, counts: np.ndarray) -> nn.Module:
        """The pruned model for kept counts `counts` [G] as evaluated (re-fitted, BatchNorm re-estimated), float32."""
        keep = self.pruner.kept_indices(counts)
        model = self.pruner.prune(keep, reconstruct=self.reconstruct != "none")
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.targets:
            refit_sequentially(model, self.targets, self.refit_x, self.pruner.kept_outputs(keep))
        elif self.refit_x is not None:
            recalibrate_batchnorm(model, self.refit_x)
        return model

    def inference_model(self, counts: np.ndarray) -> nn.Module:
        """`prune(counts)` with each BatchNorm that follows a conv folded into it: the same outputs up to float
        rounding, about 1.5x faster on a CPU. A model `torch.fx` cannot trace is returned unfolded."""
        model = self.prune(counts)
        if self._foldable:
            try:
                model = fold_batchnorm(model)
            except Exception:  # data-dependent control flow: such a model runs unfolded, as it is
                self._foldable = False
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def score(self, model: nn.Module, start: int = 0, stop: int | None = None) -> tuple[int, float]:
        """Correct predictions and summed cross-entropy of `model` on val images [start, stop), in `dtype`."""
        return self._score(model, self.val_x[start:stop], self.val_y[start:stop])

    def _score(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[int, float]:
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            return correct_and_loss(model, x, y)

    @property
    def has_selection(self) -> bool:
        """Whether the evaluator holds a selection split (`prepare_task(select_size=...)`)."""
        return self.select_y is not None

    def rescore(self, counts: np.ndarray) -> tuple[Evaluation, Evaluation | None]:
        """The policy `counts` [G] scored on all of val and on the selection split (None without one), from one
        pruned model."""
        model = self.inference_model(counts)
        scored = []
        for x, y in ((self.val_x, self.val_y), (self.select_x, self.select_y)):
            if y is not None:
                correct, loss = self._score(model, x, y)
                scored.append(Evaluation(correct / len(y), loss / len(y), len(y)))
        release_free_memory()
        return scored[0], scored[1] if self.has_selection else None

    def __call__(self, counts: np.ndarray) -> Evaluation:
        correct, loss = self.score(self.inference_model(counts))
        release_free_memory()  # the pruned copy is gone: keep a long search's memory flat (amc.engine.memory)
        n = len(self.val_y)
        return Evaluation(correct / n, loss / n, n)


class RacingReward:
    """AMC's accuracy reward with racing (successive halving in two rungs), for a search's many evaluations.

    Every policy is first scored on the first `first` val images (a uniform sample: the evaluator holds them in
    random order). Only a policy whose accuracy there is within `margin` of the leader's on the same images (the
    best policy measured on all of val so far) is scored on the rest: its reward is its accuracy on all of val.
    A policy stopped early gets the leader's full accuracy plus its paired difference to the leader on the
    first images (a control-variate estimate, lower in variance than its own accuracy on them); it is below
    the leader's by more than `margin`, so the best policy of a search is always one measured on all of val.
    With the defaults (1,000 of 5,000 images, margin 0: only a policy at least as accurate as the leader on
    the first images goes on) about half of a converged agent's policies stop early; the README gives the
    measured time and quality.
    """

    def __init__(self, evaluator: RewardEvaluator, first: int = 1000, margin: float = 0.0) -> None:
        self.evaluator, self.first, self.margin = evaluator, min(first, len(evaluator.val_y)), margin
        self.leader: tuple[float, float] | None = None  # (accuracy on the first images, on all of val)
        self.full, self.total = 0, 0  # policies scored on all of val, and in all

    def __call__(self, counts: np.ndarray) -> Evaluation:
        model = self.evaluator.inference_model(counts)
        n, first = len(self.evaluator.val_y), self.first
        correct, loss = self.evaluator.score(model, 0, first)
        self.total += 1
        accuracy = correct / first
        if self.leader is not None and accuracy < self.leader[0] - self.margin:
            release_free_memory()
            return Evaluation(self.leader[1] + accuracy - self.leader[0], loss / first, first, accuracy)
        rest_correct, rest_loss = self.evaluator.score(model, first, n)
        release_free_memory()
        self.full += 1
        full = (correct + rest_correct) / n
        if self.leader is None or full > self.leader[1]:
            self.leader = (accuracy, full)
        return Evaluation(full, (loss + rest_loss) / n, n)


@dataclass
class Task:
    """Everything a search or a baseline needs, built once by `prepare_task`; `settings` are the
    arguments it was prepared with (a search refuses a task prepared differently from its config).
    `val_idx` and `select_idx` are the TRAIN images of the reward and selection splits (empty when they come
    from a folder of the user's, `reward_data`). `cache` holds analyses of the task that several users share
    (e.g. the baselines' sensitivity table), keyed by their maker."""

    model: TrainedModel
    dataset: Dataset
    pruner: ChannelPruner
    evaluator: RewardEvaluator
    train_idx: torch.Tensor
    val_idx: torch.Tensor
    settings: dict[str, Any] = field(default_factory=dict)
    select_idx: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.int64))
    cache: dict[Any, Any] = field(default_factory=dict, repr=False)

    def test_accuracy(self, model: nn.Module) -> float:
        """Accuracy on the TEST split: for final reports only, never for choosing a policy."""
        return split_accuracy(model, self.dataset.test, self.model.mean, self.model.std)[0]


def split_accuracy(model: nn.Module, split: Split, mean: Sequence[float], std: Sequence[float],
                   batch_size: int = 250) -> tuple[float, float]:
    """Top-1 accuracy (fraction in [0, 1]) and mean cross-entropy of `model` (eval mode) on a whole split,
    normalized with `mean`, `std` `batch_size` images at a time: an in-memory ImageSet, or ImageFiles streamed
    through the evaluation transform, so no split is ever held whole as float32 (each forward pass takes
    `batch_size_for` the images)."""
    correct, loss, n = 0, 0.0, 0
    for images, labels in batches(split, batch_size, mean, std):
        c, s = correct_and_loss(model, images, labels)
        correct, loss, n = correct + c, loss + s, n + len(labels)
    return correct / n, loss / n


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
    select_size: int = 1000,
    reward_data: str | Path | None = None,
    ignore: str = "",
    image_size: int | None = None,
    channel_round: int = 1,
    device: str | torch.device = "cpu",
) -> Task:
    """Load, split, analyse and calibrate: the one-time set-up of a search (see the module docstring).

    `val_size` images of the train split (default `default_val_size`) become the reward split;
    `calib_size` images of the rest feed the least-squares statistics (`positions` sampled output
    positions per image and layer) and `refit_size` of them re-fit the pruned network sequentially and
    re-estimate its BatchNorm (0 disables both; `reconstruct` as in `RewardEvaluator`). `selection` ranks
    the channels of each group (`ls`: least-squares greedy selection from the same statistics). The split
    depends only on `seed` and the dataset. The model is analysed on the CPU, then it, the statistics, the
    re-fit and every evaluation live on `device` ("auto": the first CUDA device if there is one, else the CPU;
    nothing falls back to the CPU silently).

    The selection split (final choice among a search's best candidates) is `select_size` TRAIN images outside
    `val` (at most a fifth of those), set apart before the calibration and re-fit images are drawn (0: none;
    the calibration and re-fit images are then those of amc before the selection split). With `reward_data`,
    a folder of the user's own validation images in class folders (`load_labelled_folder`, the dataset's
    class names), rewards and the selection split come from it instead (`select_size` of its images for the
    selection split, the rest for rewards), and every TRAIN image may feed the calibration; `val_size` must
    then be None. `ignore` names layers (comma-separated) whose output channels are never pruned
    (`find_groups`). `image_size` reads an image folder (and `reward_data`) at that size from files of any size
    (`load_dataset`); only the reward, selection, calibration and re-fit images are decoded, once, and cached.
    `channel_round` r > 1 lets policies keep only multiples of r channels per group, or all of them
    (`ChannelPruner`, `amc.engine.budget.allowed_counts`).

    Raises:
        AmcError: an unavailable device, a model without prunable groups, a `reward_data` folder whose images
            differ in shape from the dataset's or that `select_size` leaves empty, `val_size` with
            `reward_data`, and the loaders' errors.
    """
    device = resolve_device(device) if isinstance(device, str) else device
    settings = dict(model=model, checkpoint=None if checkpoint is None else str(checkpoint), dataset=dataset,
                    data_dir=None if data_dir is None else str(data_dir), val_size=val_size, seed=seed,
                    calib_size=calib_size, refit_size=refit_size, positions=positions, selection=selection,
                    reconstruct=reconstruct, select_size=select_size,
                    reward_data=None if reward_data is None else str(reward_data), ignore=ignore,
                    image_size=image_size, channel_round=channel_round)
    # the device is not a setting: a search may resume on another one
    if not (isinstance(select_size, int) and select_size >= 0):
        raise AmcError(f"--select-size {select_size} must be a count of images (0: no final selection)")
    data = load_dataset(dataset, data_dir, image_size=image_size)
    trained = load_trained_model(model, checkpoint, dataset=data)
    if reward_data is None:
        train_idx, val_idx = split_train_val(len(data.train), val_size, seed)
        held: ImageSet | None = None
    else:
        if val_size is not None:
            raise AmcError("--val-size holds TRAIN images out for the rewards, but --reward-data supplies them: "
                           "drop --val-size")
        held = _reward_folder(reward_data, data, select_size, image_size)
        train_idx, val_idx = torch.arange(len(data.train)), torch.empty(0, dtype=torch.int64)
    pruner = ChannelPruner(trained.module, trained.input_shape, selection=selection, ignored=layer_names(ignore),
                           channel_round=channel_round)
    if not pruner.groups:
        raise AmcError(f"model {model} has no prunable channel group; amc prunes conv and Linear channels")
    trained.module.to(device)  # in place: the pruner's groups and layers are the same modules

    def norm(idx: torch.Tensor) -> torch.Tensor:  # decodes (once, cached) when the split is files
        return normalize(data.train.subset(idx).load().images, trained.mean, trained.std)

    # the selection split shares no image with the rewards, the calibration or the re-fit; at most a fifth of
    # the TRAIN images left, so that small data sets keep most of them for the calibration
    n_select = min(select_size, len(train_idx) // 5) if held is None else 0
    select_idx = _sample(train_idx, n_select, seed + 4).sort().values
    pool = train_idx[~torch.isin(train_idx, select_idx)]
    calib = norm(_sample(pool, calib_size, seed + 1))
    if reconstruct != "none" or selection == "ls":
        step = batch_size_for(calib.shape[1:], device, most=250)
        pruner.calibrate((batch.to(device) for batch in calib.split(step)), positions=positions, seed=seed)
    del calib  # 1.8 GB at 224x224: freed before the reward split is read
    refit_x = norm(_sample(pool, refit_size, seed + 2)) if refit_size > 0 else None
    if refit_x is None and reconstruct == "sequential":
        reconstruct = "gram"
    if held is None:
        val_x, val_y = norm(val_idx), data.train.labels[val_idx]
        select_x, select_y = norm(select_idx), data.train.labels[select_idx]
    else:
        order = torch.randperm(len(held), generator=torch.Generator().manual_seed(seed + 4))
        images = normalize(held.images[order], trained.mean, trained.std)
        select_x, select_y = images[:select_size], held.labels[order][:select_size]
        val_x, val_y = images[select_size:], held.labels[order][select_size:]
        del images  # the two views keep it until the evaluator has its copies
    evaluator = RewardEvaluator(pruner, val_x, val_y, refit_x=refit_x, reconstruct=reconstruct, seed=seed + 3,
                                select_x=select_x, select_y=select_y)
    del val_x, select_x, refit_x  # the evaluator holds its own copies (gigabytes at 224x224)
    release_free_memory()
    return Task(trained, data, pruner, evaluator, train_idx, val_idx, settings, select_idx)


def _reward_folder(folder: str | Path, data: Dataset, select_size: int, image_size: int | None) -> ImageSet:
    """The user's validation images of `folder` (see `prepare_task`), checked against the dataset."""
    held = load_labelled_folder(folder, data.classes, image_size=image_size)
    if tuple(held.images.shape[1:]) != tuple(data.image_shape):
        c, h, w = held.images.shape[1:]
        raise AmcError(f"the images of --reward-data {folder} are {c}x{h}x{w} (CxHxW) but the dataset's are "
                       f"{'x'.join(map(str, data.image_shape))}; convert them to the dataset's size")
    if len(held) <= select_size:
        raise AmcError(f"--reward-data {folder} has {len(held)} images and --select-size {select_size} leaves none "
                       f"for the rewards; pass a smaller --select-size (e.g. {len(held) // 5}) or more images")
    return held
