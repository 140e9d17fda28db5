"""Pruned models and their files: `PrunedModel` (a physically pruned module with what is needed to rebuild
and feed it) and the one torch file it is saved as.

```
{"format": "amc-pruned/1", "base": "resnet56", "num_classes": 10, "input_shape": [3, 32, 32],
 "mean": [...], "std": [...], "kept": {"layer1.0.conv1": [0, 3, 4, ...], ...}, "policy": {...} | None,
 "macs": 62697984, "params": 520000, "state_dict": {...}}
```
`load_model` rebuilds the dense `base` model, removes every channel not in `kept` (root channel indices
of the dense model, per channel group) and loads the pruned weights strictly. The file holds only
tensors, numbers, strings and lists, so it is read with torch's safe (`weights_only`) loader.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn

from amc.engine.cost import count_macs_params
from amc.engine.groups import find_groups, prune_
from amc.errors import AmcError
from amc.fileio import atomic_torch_save
from amc.models import create_model
from amc.models.registry import portable_spec

PRUNED_FORMAT = "amc-pruned/1"
_INFO_KEYS = ("base", "num_classes", "input_shape", "mean", "std", "kept", "policy", "macs", "params")


@dataclass
class PrunedModel:
    """A physically pruned model and what rebuilds and feeds it.

    Attributes:
        module: the pruned `nn.Module`.
        base: the spec of the dense model it was pruned from (registry name or factory).
        num_classes: what `create_model(base, num_classes)` needs (None: the factory's default).
        input_shape: one input's (C, H, W).
        mean, std: per-channel input normalization of [0, 1]-scaled pixels.
        kept: per pruned group, the root channel indices (of the dense model) that were kept.
        policy: the policy's JSON object, for the record (None if there was none).
    """

    module: nn.Module
    base: str
    num_classes: int | None
    input_shape: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    kept: dict[str, list[int]]
    policy: dict[str, Any] | None = None

    def save(self, path: str | Path) -> dict[str, Any]:
        """Write the model file `path` atomically (`load_model` / `PrunedModel.load` read it); returns its
        info, with the MACs and parameters counted on the module."""
        return save_pruned(path, self.module, base=self.base, num_classes=self.num_classes,
                           input_shape=self.input_shape, mean=self.mean, std=self.std, kept=self.kept,
                           policy=self.policy)

    def with_module(self, module: nn.Module) -> PrunedModel:
        """The same record for another module of the same shape (e.g. the fine-tuned one)."""
        return replace(self, module=module)

    @classmethod
    def load(cls, path: str | Path) -> PrunedModel:
        """The pruned model of a model file, with its record.

        Raises:
            AmcError: as `load_model`.
        """
        info = read_model_info(path)
        return cls(load_model(path), info["base"], info["num_classes"], tuple(info["input_shape"]),
                   tuple(info["mean"]), tuple(info["std"]), info["kept"], info["policy"])


def save_pruned(
    path: str | Path,
    model: nn.Module,
    *,
    base: str,
    num_classes: int | None,
    input_shape: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    kept: Mapping[str, Sequence[int]],
    policy: dict[str, Any] | None,
) -> dict[str, Any]:
    """Write the pruned `model` to `path` atomically; returns the file's info (see `read_model_info`).

    Args:
        model: the physically pruned model.
        base: the spec of the dense model it was pruned from (registry name or factory).
        num_classes: what `create_model(base, num_classes)` needs to rebuild the dense model (None: the
            factory's default).
        input_shape: one input's (C, H, W).
        mean, std: per-channel input normalization of [0, 1]-scaled pixels.
        kept: per pruned group, the root channel indices (of the dense model) that were kept.
        policy: the policy's JSON object, stored for the record (None if there was none).
    """
    macs, params = count_macs_params(model, input_shape)
    info = {
        "base": portable_spec(base),  # loads from any working folder
        "num_classes": None if num_classes is None else int(num_classes),
        "input_shape": [int(d) for d in input_shape],
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "kept": {name: [int(i) for i in idxs] for name, idxs in kept.items()},
        "policy": policy,
        "macs": int(macs),
        "params": int(params),
    }
    state = {key: value.detach().cpu() for key, value in model.state_dict().items()}  # loads on any machine
    atomic_torch_save({"format": PRUNED_FORMAT, **info, "state_dict": state}, path)
    return info


def read_model_info(path: str | Path) -> dict[str, Any]:
    """Everything an amc model file holds except the weights: base, num_classes, input_shape, mean,
    std, kept, policy, macs, params.

    Raises:
        AmcError: missing file, or a file that is not an amc model file.
    """
    return {k: v for k, v in _read(Path(path)).items() if k in _INFO_KEYS}


def load_model(path: str | Path) -> nn.Module:
    """The pruned model stored in the amc model file `path`, in eval mode.

    Raises:
        AmcError: missing or foreign file, or a file that no longer fits its base model's definition.
    """
    path = Path(path)
    data = _read(path)
    try:
        return _rebuild(path, data)
    except AmcError:
        raise
    except Exception as exc:  # a hand-edited or foreign record: base, shapes or kept channels that do not agree
        raise AmcError(f"{path} does not rebuild into a pruned {data['base']} ({type(exc).__name__}); its record "
                       "was edited or its model's definition changed: prune the model again with amc apply") from None


def _rebuild(path: Path, data: dict[str, Any]) -> nn.Module:
    model = create_model(data["base"], data["num_classes"])
    example = torch.zeros(2, *data["input_shape"])
    # Groups are found without re-verification: the file records only groups that passed it when the
    # model was analysed, and warnings about the other groups would be noise here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        groups, _ = find_groups(model, example, verify=False)
    by_name = {g.name: g for g in groups}
    keep: dict[str, torch.Tensor] = {}
    for name, idxs in data["kept"].items():
        group = by_name.get(name)
        if group is None or not idxs or len(set(idxs)) != len(idxs) or not all(0 <= i < group.width for i in idxs):
            raise AmcError(
                f"{path} keeps channels of group {name} that model {data['base']} does not have; "
                "its definition changed since the file was written: prune the model again with amc apply"
            )
        keep[name] = group.to_units(idxs)  # the file records the producer's channels
    prune_(model, groups, keep)
    for key, value in data["state_dict"].items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all():
            raise AmcError(f"{path} holds NaN or Inf weights in {key}: the file is damaged; "
                           "write it again with amc apply (or amc finetune)")
    try:
        model.load_state_dict(data["state_dict"], strict=True)
    except RuntimeError as exc:
        first = " ".join(str(exc).split())[:200]
        raise AmcError(
            f"{path} does not fit the pruned {data['base']} ({first}); its definition changed since the file "
            "was written: prune the model again with amc apply"
        ) from None
    return model.eval()


def _read(path: Path) -> dict[str, Any]:
    """The file's dict, checked to be an amc model file of a format this amc reads."""
    if not path.is_file():
        raise AmcError(f"model file {path} not found; check the path")
    not_ours = AmcError(
        f"{path} is not an amc model file; dense checkpoints load with --model NAME --checkpoint {path}"
    )
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a pickled module or a non-torch file: either way not something amc wrote
        with open(path, "rb") as f:
            zipped = f.read(2) == b"PK"  # torch files are zip archives: this one is a damaged torch file
        if zipped and "Unsupported global" not in str(exc):
            raise AmcError(f"{path} is a damaged torch file (truncated or overwritten: {type(exc).__name__}); "
                           "write it again with amc apply") from None
        raise not_ours from None
    if not isinstance(data, dict) or not isinstance(data.get("format"), str):
        raise not_ours
    if data["format"] != PRUNED_FORMAT:
        if data["format"].startswith("amc-pruned/"):
            raise AmcError(f"{path} has format {data['format']}; this amc reads {PRUNED_FORMAT}: apply the policy "
                           "again with this amc, or use the amc that wrote it")
        raise not_ours
    missing = [k for k in (*_INFO_KEYS, "state_dict") if k not in data]
    if missing:
        raise AmcError(f"{path} is a damaged amc model file (no {', '.join(missing)}); write it again with amc apply")
    return data
