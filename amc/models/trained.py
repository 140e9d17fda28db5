"""A trained model with the facts needed to feed it (timm's `pretrained_cfg` idea): input shape,
normalization and number of classes, read from the checkpoint or the dataset."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch.nn as nn

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
    module = create_model(spec, num_classes)
    if checkpoint is not None:
        load_checkpoint(module, checkpoint, spec)
    channels = dataset.image_shape[0] if dataset else input_shape[0]
    mean = tuple(meta.get("mean") or (dataset.mean if dataset else (0.0,) * channels))
    std = tuple(meta.get("std") or (dataset.std if dataset else (1.0,) * channels))
    shape = tuple(dataset.image_shape) if dataset else tuple(int(d) for d in input_shape)
    return TrainedModel(module.eval(), spec, num_classes, shape, mean, std)
