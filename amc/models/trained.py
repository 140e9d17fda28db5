"""A trained model with the facts needed to feed it (timm's `pretrained_cfg` idea): input shape,
normalization and number of classes, read from the checkpoint or the dataset."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch
import torch.nn as nn

from amc.errors import AmcError
from amc.models.checkpoint import load_checkpoint, read_checkpoint
from amc.models.registry import create_model

if TYPE_CHECKING:
    from amc.data.datasets import Dataset


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
    with torch.random.fork_rng(devices=[]):
        # without a checkpoint the weights are the factory's initialisation: seeded, so two runs agree
        torch.manual_seed(0)
        module = create_model(spec, num_classes)
    if checkpoint is not None:
        load_checkpoint(module, checkpoint, spec)
    channels = dataset.image_shape[0] if dataset else input_shape[0]
    mean = tuple(meta.get("mean") or (dataset.mean if dataset else (0.0,) * channels))
    std = tuple(meta.get("std") or (dataset.std if dataset else (1.0,) * channels))
    shape = tuple(dataset.image_shape) if dataset else tuple(int(d) for d in input_shape)
    trained = TrainedModel(module.eval(), spec, num_classes, shape, mean, std)
    check_fits(trained, dataset.num_classes if dataset else None, dataset.name if dataset else None)
    return trained


def check_fits(trained: TrainedModel, num_classes: int | None = None, dataset: str | None = None) -> None:
    """AmcError unless the model takes one input of its `input_shape` and returns logits [1, classes] with
    `num_classes` classes (when given): the one check every command makes before any work.

    Raises:
        AmcError: the forward pass fails, or its output is not one row of `num_classes` logits.
    """
    where = f"dataset {dataset}'s images" if dataset else "inputs"
    try:
        with torch.no_grad():
            out = trained.module.eval()(torch.zeros(1, *trained.input_shape))
    except Exception as exc:
        raise AmcError(
            f"model {trained.spec} fails on {where} of shape {tuple(trained.input_shape)} ({type(exc).__name__}); "
            "pass the model built for this data (or the dataset or --input-shape the model was built for)"
        ) from exc
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 1:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise AmcError(f"model {trained.spec} returns {shape} for one input, not a row of class logits [1, classes]; "
                       "amc prunes classifiers: end the model in its logits")
    if num_classes is not None and out.shape[1] != num_classes:
        raise AmcError(f"model {trained.spec} has {out.shape[1]} outputs but {dataset or 'the data'} has {num_classes} "
                       "classes; build it with num_classes to match (a factory gets num_classes= if it takes it)")
