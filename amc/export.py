"""Writing models to disk: a plain state-dict checkpoint, a `torch.export` ExportedProgram and ONNX, each
written atomically.

Every writer goes through `amc.fileio`, so a reader (or a run killed mid-write) never sees a partial file:
the target either keeps its old content or has the complete new one. Both deploy formats are captured
once by `torch.export` (the ONNX exporter converts that program), from the model as deployed: eval mode,
CPU, BatchNorm folded (`amc.engine.measure.inference_copy`), with a dynamic batch dimension. TorchScript
is not offered: `torch.jit.trace`, `torch.jit.save` and `torch.jit.load` are deprecated since torch 2.13.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.nn as nn

from amc.engine.measure import inference_copy
from amc.errors import AmcError
from amc.fileio import atomic_path, atomic_torch_save

EXPORT_FORMATS = ("program", "onnx", "torchscript")
"""The `kind`s `export` writes: "program" (`OUT.pt2`, a `torch.export` ExportedProgram), "onnx" (`OUT.onnx`) and,
for deployments that still need it, "torchscript" (`OUT.torchscript.pt`; torch 2.13 deprecates TorchScript)."""

ONNX_OPSET = 18  # the opset torch's ONNX exporter implements its operators in: no version conversion
_SUFFIXES = {"program": ".pt2", "onnx": ".onnx", "torchscript": ".torchscript.pt"}
_EXAMPLE_BATCH = 2  # torch.export specializes sizes 0 and 1, so the example batch must not be one of those
# torch's own deprecated `LeafSpec` warns when torch deep-copies a pytree spec (ExportedProgram
# decompositions, used by the ONNX exporter): an internal warning no caller can act on.
_TORCH_INTERNAL_WARNING = r"`isinstance\(treespec, LeafSpec\)` is deprecated"


def save_state_dict(model: nn.Module, path: str | Path) -> None:
    """Write `{"state_dict": model.state_dict()}` to `path` atomically (loadable by `amc.models.load_checkpoint`)."""
    atomic_torch_save({"state_dict": model.state_dict()}, path)


def export(model: nn.Module, input_shape: Sequence[int], out_path: str | Path, kind: str) -> Path:
    """Export `model` in the format `kind` next to `out_path`: `out_path` with its suffix replaced by `.pt2`
    ("program", see `export_program`) or `.onnx` ("onnx", see `export_onnx`).

    Args:
        model: the model to export; not modified (a deploy copy is exported).
        input_shape: one input's (C, H, W); the batch size stays free in the exported graph.
        out_path: the run's output file (e.g. the checkpoint `OUT.pt`) that names the export.
        kind: one of `EXPORT_FORMATS`.

    Returns:
        The path written.

    Raises:
        AmcError: `kind` is unknown, the export would overwrite `out_path` itself, or the export fails
            (see `export_program` and `export_onnx`).
    """
    if kind not in _SUFFIXES:
        raise AmcError(f"unknown export format {kind!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    out_path = Path(out_path)
    path = out_path.with_suffix(_SUFFIXES[kind])
    if path == out_path:
        raise AmcError(f"the {kind} export would overwrite {out_path}; give that file another suffix, e.g. .pt")
    if kind == "program":
        export_program(model, input_shape, path)
    elif kind == "onnx":
        export_onnx(model, input_shape, path)
    else:
        export_torchscript(model, input_shape, path)
    return path


def export_torchscript(model: nn.Module, input_shape: Sequence[int], path: str | Path) -> None:
    """Trace the deploy copy (`inference_copy`) with `torch.jit.trace` and save it atomically; it loads with
    `torch.jit.load(path)` and no amc. torch 2.13 deprecates TorchScript: amc says so once, in its own one-line
    warning, and keeps torch's deprecation warnings of the calls it makes out of the output.

    Raises:
        AmcError: the model does not trace.
    """
    warnings.warn("TorchScript is deprecated by torch; --export program writes the torch.export format that "
                  "replaces it")
    deploy = inference_copy(model)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.jit")
            warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*torch\.jit.*")
            traced = torch.jit.trace(deploy, torch.randn(_EXAMPLE_BATCH, *input_shape))
            with atomic_path(path) as tmp:
                torch.jit.save(traced, str(tmp))
    except AmcError:
        raise
    except Exception as exc:
        raise AmcError(f"TorchScript tracing of {type(model).__name__} failed ({type(exc).__name__}); "
                       "use --export program or --export onnx") from None


def export_program(model: nn.Module, input_shape: Sequence[int], path: str | Path) -> None:
    """Capture `model` as deployed with `torch.export` and save the ExportedProgram to `path` atomically.

    The file needs neither amc nor the model's source: `torch.export.load(path).module()` is a module that
    maps an input [batch, C, H, W] (float32, any batch >= 1) to the logits [batch, num_classes], equal to
    `model.eval()`'s up to float rounding (BatchNorm is folded into the convs).

    Args:
        model: the model to export; not modified (a deploy copy is captured).
        input_shape: one input's (C, H, W).
        path: the file to write, conventionally `*.pt2`.

    Raises:
        AmcError: the model does not export (its forward branches on tensor values or fixes the batch size).
    """
    program = _capture(model, input_shape)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.export.save(program, f)  # a file object: torch.export.save logs a warning for names not *.pt2


def export_onnx(model: nn.Module, input_shape: Sequence[int], path: str | Path) -> None:
    """Export `model` as deployed (eval mode, BatchNorm folded) to ONNX with torch's current (`torch.export`
    based) exporter, atomically: opset `ONNX_OPSET`, input `input` [batch, C, H, W] float32 -> `logits`
    [batch, num_classes], the batch axis dynamic (named `batch`), all weights inside the one file.

    The graph is checked with `onnx.checker` before it replaces `path`.

    Args:
        model: the model to export; not modified (a deploy copy is captured).
        input_shape: one input's (C, H, W).
        path: the file to write, conventionally `*.onnx`.

    Raises:
        AmcError: the optional `onnx` or `onnxscript` package is not installed, the model does not export
            (see `export_program`), or the exporter or `onnx.checker` rejects the graph.
    """
    try:
        import onnx
        import onnxscript  # noqa: F401  (torch's exporter needs it; checked here for a clear error)
    except ImportError as exc:
        raise AmcError(f"ONNX export needs the onnx and onnxscript packages (cannot import {exc.name or 'onnx'}): "
                       f"pip install 'amc[onnx]'") from None
    program = _capture(model, input_shape)
    try:
        with _torch_internal_warnings_ignored(), _quiet_logger("torch.onnx"):
            onnx_program = torch.onnx.export(
                program,
                (),
                input_names=["input"],
                output_names=["logits"],
                dynamic_shapes=({0: "batch"},),  # with a captured program: only names the dynamic axis
                opset_version=ONNX_OPSET,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
    except Exception as exc:  # torch.onnx.OnnxExporterError and whatever its converters raise
        raise AmcError(f"ONNX conversion of {type(model).__name__} failed ({_first_line(exc)}); "
                       f"export it with --export program instead") from exc
    with atomic_path(path) as tmp:
        onnx_program.save(tmp, external_data=False)
        try:
            onnx.checker.check_model(str(tmp))
        except onnx.checker.ValidationError as exc:
            raise AmcError(f"the exported ONNX graph fails onnx.checker ({_first_line(exc)}); "
                           f"export it with --export program instead") from exc


def _capture(model: nn.Module, input_shape: Sequence[int]) -> torch.export.ExportedProgram:
    """`torch.export.export` of the deploy copy of `model` on a random [2, *input_shape] batch, the batch
    dimension dynamic (>= 1). Raises AmcError with one line if the model does not export."""
    deploy = inference_copy(model)
    example = torch.randn(_EXAMPLE_BATCH, *input_shape)
    batch = torch.export.Dim("batch", min=1)
    # On failure torch.export prints the partial graph to stderr and logs a hint about the failing symbol;
    # the one-line AmcError says what they mean. On success what it printed is passed on.
    printed = io.StringIO()
    try:
        with (_torch_internal_warnings_ignored(), _quiet_logger("torch.fx.experimental.symbolic_shapes"),
              contextlib.redirect_stderr(printed)):
            program = torch.export.export(deploy, (example,), dynamic_shapes=({0: batch},))
    except Exception as exc:
        problem, fix = _export_problem(exc)
        raise AmcError(f"{type(model).__name__} cannot be exported: {problem}; {fix}, "
                       f"or ship the state-dict checkpoint with the model's code") from exc
    sys.stderr.write(printed.getvalue())
    return program


def _export_problem(exc: Exception) -> tuple[str, str]:
    """What in the model made `torch.export` fail, and how to change the model, in a few words each."""
    if type(exc).__name__ == "GuardOnDataDependentSymNode":
        return ("its forward branches on tensor values (data-dependent control flow)",
                "rewrite the branch with torch.cond or without a Python `if` on a tensor")
    if "Constraints violated" in str(exc) and "batch" in str(exc):
        return ("its forward fixes the batch size",
                "take sizes from the input (x.flatten(1), x.shape[0]) instead of constants")
    return _first_line(exc), "make its forward traceable by torch.export"


def _first_line(exc: BaseException) -> str:
    """`exc`'s type and the first line of its message, without terminal colour codes."""
    lines = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


@contextlib.contextmanager
def _torch_internal_warnings_ignored() -> Iterator[None]:
    """Ignore torch's internal `LeafSpec` FutureWarning (see `_TORCH_INTERNAL_WARNING`); others pass."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_TORCH_INTERNAL_WARNING, category=FutureWarning)
        yield


@contextlib.contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    """Raise logger `name` to ERROR for the block (e.g. torch's ONNX exporter logs a warning for each
    torchvision operator it skips when torchvision is not installed; amc's models use none)."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
