"""Measuring a model: accuracy and loss on a split, BatchNorm re-estimation, CPU latency."""

from __future__ import annotations

import copy
import statistics
import warnings
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.benchmark as benchmark
from torch.fx.experimental.optimization import fuse

from amc.augment import to_channels_last


@torch.no_grad()
def accuracy(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> tuple[float, float]:
    """Top-1 accuracy (fraction in [0, 1]) and mean cross-entropy of `model` in eval mode.

    `inputs` are normalized float images [N, C, H, W]; `labels` int64 [N].
    """
    model.eval()
    correct, loss = 0, 0.0
    for start in range(0, len(inputs), batch_size):
        logits = model(inputs[start : start + batch_size])
        target = labels[start : start + batch_size]
        correct += int((logits.argmax(1) == target).sum())
        loss += float(F.cross_entropy(logits, target, reduction="sum"))
    return correct / len(inputs), loss / len(inputs)


@contextmanager
def reestimating_batchnorm(model: nn.Module) -> Iterator[None]:
    """Inside the block, every BatchNorm of `model` starts from empty statistics and averages those of all
    the batches it sees (momentum None); only the BatchNorms run in training mode (dropout stays off).
    Afterwards the model is in eval mode with the new statistics."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    try:
        yield
    finally:
        for m, momentum in zip(norms, saved):
            m.momentum = momentum
        model.eval()


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, inputs: torch.Tensor, batch_size: int = 256) -> None:
    """Re-estimate every BatchNorm's running mean and variance on `inputs` (normalized images).

    Pruning shifts the statistics that reach later BatchNorms; a few training batches fix them
    (`reestimating_batchnorm`); the model is left in eval mode.
    """
    if len(inputs) == 0 or not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return
    with reestimating_batchnorm(model):
        for start in range(0, len(inputs), batch_size):
            model(inputs[start : start + batch_size])


def inference_copy(model: nn.Module, *, channels_last: bool = False) -> nn.Module:
    """A CPU copy of `model` in the form a deployment runs: eval mode, each BatchNorm that follows a conv
    folded into it (where `torch.fx` can trace the model), in channels-last layout if `channels_last`, else
    contiguous.

    Outputs equal the model's up to float rounding; the caller's model is left as it is.
    """
    model = copy.deepcopy(model).cpu().eval()
    try:
        model = fuse(model)
    except Exception as exc:  # models with data-dependent control flow do not trace
        warnings.warn(f"BatchNorm not folded for inference: the model does not trace with torch.fx "
                      f"({type(exc).__name__})")
    return model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def cpu_latencies(models: Sequence[nn.Module], input_shape: Sequence[int], batch_size: int = 1, *,
                  threads: int | None = None, repeats: int = 7, min_run_time: float = 0.2,
                  channels_last: bool = False) -> list[float]:
    """Median latency in milliseconds of one forward pass of a batch, per model, on the CPU.

    Each model is timed as `inference_copy` runs it (BatchNorm folded, `channels_last` layout). The models
    are measured in `repeats` interleaved rounds, so that a change in the machine's load during the
    measurement hits all of them alike and their ratios (speed-ups) stay fair; each measurement is
    `torch.utils.benchmark.Timer.blocked_autorange` over at least `min_run_time` seconds. `threads`
    defaults to torch's current setting.
    """
    x = torch.randn(batch_size, *input_shape)
    if channels_last:
        x = to_channels_last(x)
    num_threads = threads or torch.get_num_threads()
    timers = [benchmark.Timer("model(x)", globals={"model": inference_copy(m, channels_last=channels_last), "x": x},
                              num_threads=num_threads) for m in models]
    with torch.no_grad():
        for timer in timers:
            timer.timeit(1)  # warm-up: the first call builds kernels for these shapes
        samples = [[timer.blocked_autorange(min_run_time=min_run_time).median for timer in timers]
                   for _ in range(repeats)]
    return [1000.0 * statistics.median(column) for column in zip(*samples)]


def cpu_latency(model: nn.Module, input_shape: Sequence[int], batch_size: int = 1, **kwargs: Any) -> float:
    """`cpu_latencies` of one model (milliseconds)."""
    return cpu_latencies([model], input_shape, batch_size, **kwargs)[0]
