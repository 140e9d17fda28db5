"""Measuring a model: accuracy and loss on a split, the deployed form of a model, CPU latency."""

from __future__ import annotations

import copy
import math
import statistics
import warnings
from typing import Any, Sequence

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.benchmark as benchmark
from torch.nn.utils.fusion import fuse_conv_bn_eval

from amc.errors import AmcError


def to_channels_last(images: torch.Tensor) -> torch.Tensor:
    """A [N, C, H, W] batch in channels-last memory layout (same values), the faster one for CPU convolutions;
    tensors of other ranks come back unchanged."""
    return images.contiguous(memory_format=torch.channels_last) if images.dim() == 4 else images


@torch.no_grad()
def accepts_channels_last(model: nn.Module, input_shape: Sequence[int]) -> bool:
    """True when `model` computes the same outputs from channels-last inputs and weights as from contiguous
    ones. Models that flatten with `x.view(x.size(0), -1)` (or read strides) fail on channels-last tensors;
    they run contiguous. Non-image inputs are never channels-last. The caller's model is not changed."""
    if len(input_shape) != 3:
        return False
    x = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0))
    probe = copy.deepcopy(model).cpu().eval()
    want = probe(x)
    try:
        got = probe.to(memory_format=torch.channels_last)(to_channels_last(x))
    except Exception:  # e.g. "view size is not compatible with input tensor's size and stride"
        return False
    # float rounding differs between the layouts: the tolerance scales with the outputs (an untrained deep model's
    # logits may be in the thousands)
    return (isinstance(got, torch.Tensor) and got.shape == want.shape
            and bool((got - want).abs().max() <= 1e-4 * (1.0 + want.abs().max())))


# On a CPU an evaluation batch holds at most the values of 500 CIFAR images (10 images at 224x224): a batch's
# activations grow with its pixels (resnet50 at 224 holds gigabytes for 500 images) and a larger batch computes no
# faster there. Accelerators keep whole batches, which they need to be busy.
_CPU_BATCH_VALUES = 500 * 3 * 32 * 32


def batch_size_for(sample_shape: Sequence[int], device: torch.device | str, most: int = 500) -> int:
    """Images per evaluation batch for inputs of one sample's shape `sample_shape` (e.g. [C, H, W]) on `device`:
    `most`, or on a CPU fewer for large images, so that a batch holds at most as many values as 500 CIFAR images."""
    if torch.device(device).type != "cpu":
        return most
    return max(1, min(most, _CPU_BATCH_VALUES // max(1, math.prod(sample_shape))))


@torch.no_grad()
def accuracy(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor,
             batch_size: int | None = None) -> tuple[float, float]:
    """Top-1 accuracy (fraction in [0, 1]) and mean cross-entropy of `model` in eval mode.

    `inputs` are normalized float images [N, C, H, W]; `labels` int64 [N]; each batch is moved to the model's
    device. `batch_size` images per forward pass (default `batch_size_for` the images and the model's device).
    """
    correct, loss = correct_and_loss(model, inputs, labels, batch_size)
    return correct / len(inputs), loss / len(inputs)


@torch.no_grad()
def correct_and_loss(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor,
                     batch_size: int | None = None) -> tuple[int, float]:
    """The number of correct top-1 predictions of `model` (in eval mode) and its summed cross-entropy (float32
    even under `torch.autocast`), as `accuracy` measures them; sums add up over parts of a split."""
    model.eval()
    device = next(iter(model.parameters()), torch.zeros(0)).device
    batch_size = batch_size or batch_size_for(inputs.shape[1:], device)
    correct, loss = 0, 0.0
    for start in range(0, len(inputs), batch_size):
        logits = model(inputs[start : start + batch_size].to(device))
        target = labels[start : start + batch_size].to(device)
        correct += int((logits.argmax(1) == target).sum())
        loss += float(F.cross_entropy(logits, target, reduction="sum"))  # autocast runs it in float32
    return correct, loss


_CONV_BN = ((nn.Conv1d, nn.BatchNorm1d), (nn.Conv2d, nn.BatchNorm2d), (nn.Conv3d, nn.BatchNorm3d))


def fold_batchnorm(model: nn.Module) -> torch.fx.GraphModule:
    """`model` (in eval mode) traced with `torch.fx`, each BatchNorm that reads only a conv's output folded into
    that conv (`torch.nn.utils.fusion.fuse_conv_bn_eval`, which builds a new conv). `model` is not modified:
    the trace has containers of its own; it shares the layers it does not fold with `model`
    (`inference_copy` gives an independent copy).

    The same rewrite as `torch.fx.experimental.optimization.fuse`, which cannot be used: importing it loads
    TorchScript code that torch 2.13 deprecates.

    Raises:
        Exception: whatever `torch.fx.symbolic_trace` raises for a model it cannot trace.
    """
    traced = torch.fx.symbolic_trace(model)
    modules = dict(traced.named_modules())
    for node in list(traced.graph.nodes):
        source = node.args[0] if node.op == "call_module" and node.args else None
        if not (isinstance(source, torch.fx.Node) and source.op == "call_module" and len(source.users) == 1):
            continue
        conv, norm = modules[source.target], modules[node.target]
        if not any(type(conv) is c and type(norm) is b for c, b in _CONV_BN) or not norm.track_running_stats:
            continue
        parent, _, name = source.target.rpartition(".")
        setattr(traced.get_submodule(parent) if parent else traced, name, fuse_conv_bn_eval(conv, norm))
        node.replace_all_uses_with(source)
        traced.graph.erase_node(node)
    traced.graph.lint()
    traced.delete_all_unused_submodules()
    traced.recompile()
    return traced


def inference_copy(model: nn.Module, *, channels_last: bool = False, device: str | torch.device = "cpu") -> nn.Module:
    """A copy of `model` on `device` in the form a deployment runs: eval mode, each BatchNorm that follows a conv
    folded into it (`fold_batchnorm`, where `torch.fx` can trace the model), in channels-last layout if
    `channels_last`, else contiguous.

    Outputs equal the model's up to float rounding; the caller's model is left as it is.
    """
    model = copy.deepcopy(model).to(device).eval()
    try:
        model = fold_batchnorm(model)
    except Exception as exc:  # models with data-dependent control flow do not trace
        warnings.warn(f"BatchNorm not folded for inference: the model does not trace with torch.fx "
                      f"({type(exc).__name__})")
    return model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def latencies(models: Sequence[nn.Module], input_shape: Sequence[int], batch_size: int = 1, *,
              threads: int | None = None, repeats: int = 7, min_run_time: float = 0.2,
              channels_last: bool = False, device: str | torch.device = "cpu") -> list[float]:
    """Median latency in milliseconds of one forward pass of a batch, per model, on `device` (a CUDA device is
    synchronised around every timed call by `torch.utils.benchmark`).

    Each model is timed as `inference_copy` runs it (BatchNorm folded, `channels_last` layout). The models
    are measured in `repeats` interleaved rounds, so that a change in the machine's load during the
    measurement hits all of them alike and their ratios (speed-ups) stay fair; each measurement is
    `torch.utils.benchmark.Timer.blocked_autorange` over at least `min_run_time` seconds. `threads`
    defaults to torch's current setting.
    """
    x = torch.randn(batch_size, *input_shape, device=device)
    if channels_last:
        if not all(accepts_channels_last(m, input_shape) for m in models):
            raise AmcError("the model does not run in channels-last layout (e.g. it flattens with x.view(...)); "
                           "time it without --channels-last")
        x = to_channels_last(x)
    num_threads = threads or torch.get_num_threads()
    timers = [benchmark.Timer("model(x)", globals={"model": inference_copy(m, channels_last=channels_last, device=device),
                                                 "x": x},
                              num_threads=num_threads) for m in models]
    with torch.no_grad():
        for timer in timers:
            timer.timeit(1)  # warm-up: the first call builds kernels for these shapes
        samples = [[timer.blocked_autorange(min_run_time=min_run_time).median for timer in timers]
                   for _ in range(repeats)]
    return [1000.0 * statistics.median(column) for column in zip(*samples)]


def latency(model: nn.Module, input_shape: Sequence[int], batch_size: int = 1, **kwargs: Any) -> float:
    """`latencies` of one model (milliseconds)."""
    return latencies([model], input_shape, batch_size, **kwargs)[0]
