"""Reading trained weights from disk and loading them strictly into a model, with one-line errors."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from amc.errors import AmcError, first, one_line

# Keys under which common training scripts nest the state dict, tried in order.
_STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict")
# Optional facts about the training set-up that callers need before building the model or the data.
_METADATA_KEYS = ("mean", "std", "num_classes", "arch")
_DDP_PREFIX = "module."
# Set only inside `unsafe_unpickling()`: the one way a checkpoint's pickled objects are ever unpickled.
_UNSAFE_UNPICKLE: ContextVar[bool] = ContextVar("amc_unsafe_unpickle", default=False)
UNSAFE_FLAG = "--unsafe-unpickle"


@contextmanager
def unsafe_unpickling() -> Iterator[None]:
    """Inside the block, checkpoints that hold pickled Python objects (a whole `nn.Module`, custom classes) are
    unpickled instead of refused. Unpickling runs any code the file's author put in it: use this only for files
    you made yourself. The CLI enters it for `--unsafe-unpickle`; outside it amc reads every checkpoint with
    torch's safe (`weights_only`) loader."""
    token = _UNSAFE_UNPICKLE.set(True)
    try:
        yield
    finally:
        _UNSAFE_UNPICKLE.reset(token)


def read_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a checkpoint file without building a model.

    Accepts a raw state dict, a dict holding one under `state_dict`, `model` or `model_state_dict`, or a
    pickled `nn.Module`. A DataParallel/DDP `module.` prefix is stripped.

    Returns:
        (state_dict, metadata): metadata holds whichever of `mean`, `std`, `num_classes`, `arch` the
        checkpoint stores beside the state dict (empty for a raw state dict).

    Raises:
        AmcError: missing file, not a torch file, no state dict inside, or a NaN/Inf value in a float tensor.
    """
    obj = _torch_load(Path(path))
    state_dict, metadata = _split(obj, path)
    if state_dict and all(key.startswith(_DDP_PREFIX) for key in state_dict):
        state_dict = {key[len(_DDP_PREFIX) :]: value for key, value in state_dict.items()}
    for key, value in state_dict.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise AmcError(
                f"checkpoint {path} holds NaN or Inf values in {key}; use a checkpoint from before training diverged"
            )
    return state_dict, metadata


def load_checkpoint(model: nn.Module, path: str | Path, model_name: str | None = None) -> dict[str, Any]:
    """Load a checkpoint's weights into `model` strictly (every key present, no extra keys, same shapes).

    Args:
        model: the freshly built model; left untouched when the checkpoint does not fit.
        path: the checkpoint file (see `read_checkpoint` for the accepted layouts).
        model_name: how errors name the model, e.g. its registry name; defaults to the class name.

    Returns:
        The checkpoint's metadata (`mean`, `std`, `num_classes`, `arch` where present).

    Raises:
        AmcError: as `read_checkpoint`, or when keys or shapes differ from the model's.
    """
    state_dict, metadata = read_checkpoint(path)
    mismatch = _describe_mismatch(model.state_dict(), state_dict)
    if mismatch:
        name = model_name or type(model).__name__
        hint = f" (it records arch {metadata['arch']})" if "arch" in metadata else ""
        raise AmcError(
            f"checkpoint {path} does not fit model {name}: {mismatch}; "
            f"pass the --model the checkpoint was trained with{hint}"
        )
    model.load_state_dict(state_dict, strict=True)
    return metadata


def _torch_load(path: Path) -> object:
    if not path.is_file():
        raise AmcError(f"checkpoint file {path} not found; check the checkpoint path")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        # the safe loader met a class or function to import ("Unsupported global", "unsupported GLOBAL ...")
        if "unsupported global" in str(exc).lower():
            # Never unpickled unless asked in so many words: unpickling runs any code the file's author chose.
            if _UNSAFE_UNPICKLE.get():
                return _unpickle(path)
            raise AmcError(
                f"checkpoint {path} holds pickled Python objects (a whole model or custom classes), which amc does "
                "not load because unpickling can run code; save the weights with torch.save(model.state_dict(), "
                f"path), or, for a file you made yourself, pass {UNSAFE_FLAG}"
            ) from None
        raise AmcError(
            f"checkpoint {path} is not a readable torch file ({type(exc).__name__}); give a file written by torch.save"
        ) from None


def _unpickle(path: Path) -> object:
    """torch.load with `weights_only=False`, the working folder importable (where `torch.save` usually ran)."""
    here = str(Path.cwd())
    sys.path.insert(0, here)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise AmcError(f"checkpoint {path} could not be unpickled ({one_line(exc)[:150]}); put the module that "
                       "defines its classes on PYTHONPATH or run amc from its folder") from None
    finally:
        sys.path.remove(here)


def _split(obj: object, path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    if isinstance(obj, nn.Module):
        return dict(obj.state_dict()), {}
    if isinstance(obj, Mapping):
        for key in _STATE_DICT_KEYS:
            inner = obj.get(key)
            if isinstance(inner, nn.Module):
                inner = inner.state_dict()
            if _is_state_dict(inner):
                return dict(inner), {k: obj[k] for k in _METADATA_KEYS if k in obj}
        if _is_state_dict(obj):
            return dict(obj), {}
    raise AmcError(
        f"checkpoint {path} holds no state dict ({type(obj).__name__}); "
        f"save model.state_dict(), alone or under one of the keys {', '.join(_STATE_DICT_KEYS)}"
    )


def _is_state_dict(obj: object) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())
    )


def _describe_mismatch(expected: Mapping[str, Tensor], found: Mapping[str, Tensor]) -> str:
    """Empty when `found` fits `expected`; otherwise '; '-joined parts naming the first offending keys."""
    # BatchNorm fills in a missing num_batches_tracked itself (checkpoints from before torch 0.4.1 lack it).
    missing = [k for k in expected if k not in found and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in found if k not in expected]
    misshaped = [
        f"{k} (checkpoint {list(found[k].shape)}, model {list(expected[k].shape)})"
        for k in expected
        if k in found and found[k].shape != expected[k].shape
    ]
    parts = [
        f"{label} {first(keys)}"
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("mis-shaped keys", misshaped))
        if keys
    ]
    return "; ".join(parts)
