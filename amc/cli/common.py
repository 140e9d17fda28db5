"""Helpers shared by the commands. They take values, not an argparse namespace, and import torch: command
modules import this module inside their run function only."""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch.nn as nn

from amc.data.datasets import Dataset, load_dataset
from amc.engine.budget import Budget
from amc.errors import AmcError
from amc.fileio import check_writable, exclusive_lock
from amc.models.pruned import PrunedModel, read_model_info
from amc.models.trained import TrainedModel, check_fits, load_trained_model

DEFAULT_INPUT_SHAPE = (3, 32, 32)  # one input's (C, H, W) without --dataset or --input-shape


def warn_if_untrained(spec: str, checkpoint: str | None, doing: str) -> None:
    """Warn that `doing` (e.g. "evaluating") uses the untrained model `spec` when no checkpoint is given (a pruned-model
    file carries its own weights)."""
    if checkpoint is None and not is_model_file(spec):
        warnings.warn(f"no --checkpoint: {doing} the untrained model {spec} (its initialisation with seed 0)")


def is_model_file(spec: str) -> bool:
    """True when --model names a file rather than a dense model: an amc pruned-model file, whatever its suffix
    (`pkg.mod:factory` and `file.py:factory` specs hold a colon; registered names are not files)."""
    return ":" not in spec and (Path(spec).is_file() or spec.endswith((".pt", ".pth")))


def dataset(name: str | None, data_dir: str | None, image_size: int | None = None) -> Dataset | None:
    """The named dataset (`load_dataset`), or None when no --dataset was given."""
    return load_dataset(name, data_dir, image_size=image_size) if name else None


def trained_model(spec: str, checkpoint: str | None, data: Dataset | None,
                  input_shape: Sequence[int] | None = None) -> TrainedModel:
    """The model `spec` (and `checkpoint`) name, with its input shape and normalization.

    `spec` may be an amc pruned-model file, which carries its own weights, shape and normalization.
    Without `data`, `input_shape` is one input's (C, H, W) (default 3, 32, 32).
    """
    if not is_model_file(spec):
        shape = data.image_shape if data is not None else input_shape or DEFAULT_INPUT_SHAPE
        return load_trained_model(spec, checkpoint, dataset=data, input_shape=shape)
    if checkpoint:
        raise AmcError(f"{spec} is a pruned-model file with its own weights; drop --checkpoint")
    pruned = pruned_model_file(spec, data)
    return TrainedModel(pruned.module, spec, pruned.num_classes, pruned.input_shape, pruned.mean, pruned.std)


def pruned_model_file(path: str, data: Dataset | None) -> PrunedModel:
    """The pruned-model file `path`, checked to take `data`'s images and classes (when given)."""
    shape = tuple(read_model_info(path)["input_shape"])  # before rebuilding the model: a quick, clear refusal
    if data is not None and tuple(data.image_shape) != shape:
        raise AmcError(
            f"{path} takes inputs of shape {shape} but dataset {data.name} has {tuple(data.image_shape)}; "
            "pass the dataset (and --image-size) the model was pruned on"
        )
    pruned = PrunedModel.load(path)
    check_fits(TrainedModel(pruned.module, path, pruned.num_classes, pruned.input_shape, pruned.mean, pruned.std),
               data.num_classes if data else None, data.name if data else None)
    return pruned


def budget(target_flops: float | None, target_params: float | None, target_latency: float | None) -> Budget | None:
    """The budget the --target-* flags give (at most one is set), None when none is."""
    for kind, ratio in (("flops", target_flops), ("latency", target_latency), ("params", target_params)):
        if ratio is not None:
            return Budget(kind, ratio)
    return None


def check_out(out: str | Path, force: bool) -> None:
    """Refuse to overwrite `out` without `force`, and an `out` that cannot be written; called before any work."""
    if Path(out).exists() and not force:
        raise AmcError(f"{out} already exists; pass --force to overwrite it or choose another --out")
    check_writable(out)


def output_lock(out: str | Path) -> AbstractContextManager:
    """A lock on the output file `out` for a command's whole run (a second writer is refused at once); the lock
    file `.NAME.lock` sits beside `out` while the command runs. Under torchrun only rank 0 writes and locks."""
    if int(os.environ.get("RANK", "0")) != 0:
        return nullcontext()
    out = Path(out)
    return exclusive_lock(out, out.parent / f".{out.name}.lock")


def print_json(obj: dict[str, Any]) -> None:
    print(json.dumps(obj, indent=2))


def print_rows(rows: list[tuple[str, str]]) -> None:
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


def export_all(model: nn.Module, input_shape: Sequence[int], out: str | Path, kinds: Sequence[str]) -> None:
    """Write each requested export of `model` beside `out` (see `amc.export.export`) and say where."""
    from amc.export import export

    for kind in kinds:
        path = export(model, input_shape, out, kind)
        print(f"exported {kind}: {path}", file=sys.stderr)
