"""Writing models to disk: a plain state-dict checkpoint, TorchScript and ONNX, each written atomically.

Every writer goes through `amc.fileio`, so a reader (or a run killed mid-write) never sees a partial file:
the target either keeps its old content or has the complete new one.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn

from amc.errors import AmcError
from amc.evaluate import inference_copy
from amc.fileio import atomic_path, atomic_torch_save

ONNX_OPSET = 17


def save_state_dict(model: nn.Module, path: str | Path) -> None:
    """Write `{"state_dict": model.state_dict()}` to `path` atomically (loadable by `amc.models.load_checkpoint`)."""
    atomic_torch_save({"state_dict": model.state_dict()}, path)


def export_torchscript(model: nn.Module, input_shape: Sequence[int], path: str | Path) -> None:
    """Trace `model` as deployed (`amc.evaluate.inference_copy`: eval mode, CPU, BatchNorm folded into the
    convs) and save it as TorchScript, atomically.

    The file loads with plain `torch.jit.load(path)`, with no amc (or model source) installed.

    Args:
        model: the model to export; not modified (a copy is traced).
        input_shape: one input's (C, H, W); the batch size stays free in the traced graph.
        path: the file to write, conventionally `*.ts` or `*.pt`.
    """
    traced_model = inference_copy(model)
    example = torch.randn(2, *input_shape)
    with torch.no_grad():
        traced = torch.jit.trace(traced_model, example)
    with atomic_path(path) as tmp:
        torch.jit.save(traced, str(tmp))


def export_onnx(model: nn.Module, input_shape: Sequence[int], path: str | Path) -> None:
    """Export `model` as deployed (eval mode, BatchNorm folded) to ONNX, atomically: opset 17, input `input`
    [batch, C, H, W] -> `logits`.

    The batch axis is dynamic. The graph is checked with `onnx.checker` before it replaces `path`.

    Raises:
        AmcError: the optional `onnx` package is not installed.
    """
    try:
        import onnx
    except ImportError:
        raise AmcError("ONNX export needs the onnx package: pip install 'amc[onnx]'") from None
    export_model = inference_copy(model)
    example = torch.randn(1, *input_shape)
    # The TorchScript-based exporter needs no onnxscript; newer torch defaults to the dynamo one.
    legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    with atomic_path(path) as tmp:
        torch.onnx.export(
            export_model,
            (example,),
            str(tmp),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=ONNX_OPSET,
            **legacy,
        )
        onnx.checker.check_model(str(tmp))
