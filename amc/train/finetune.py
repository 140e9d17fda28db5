"""Fine-tuning a (pruned) classification model.

SGD with Nesterov momentum, a linear warm-up then cosine decay per step, optional knowledge distillation,
a validation pass every epoch, and (with `out`) atomic best/last checkpoints that `resume=True` continues
from. Under `torchrun` with several processes the same call trains with DistributedDataParallel.

Randomness is re-derived at every epoch from (seed, epoch[, rank]) instead of carried over: the data
order and augmentation come from a generator seeded with seed + epoch (the same on every rank, as
`batches` requires), torch's global RNG (dropout) is reseeded per epoch and rank. A resumed run therefore
needs no saved RNG state to continue exactly as an uninterrupted one would, on every rank.
"""

from __future__ import annotations

import copy
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from amc.data.datasets import ImageSet, Split, batches
from amc.engine.device import resolve_device
from amc.engine.measure import accepts_channels_last, accuracy
from amc.errors import AmcError
from amc.export import save_state_dict
from amc.fileio import atomic_torch_save, check_writable
from amc.train import distributed
from amc.train.config import FinetuneConfig

SaveFn = Callable[[nn.Module, Path], None]

# Crop+flip is the CIFAR recipe for natural images. On tiny images such as the 8x8 digits a 4-pixel
# shift removes half the digit and a mirrored digit is another shape, so they are not augmented.
AUGMENT_MIN_SIZE = 32
_EVAL_BATCH = 500
_LAST_FORMAT = 1
# Settings that may differ between a run and its resumption without making the checkpoint's optimizer
# state or step count meaningless (a larger `epochs` stretches the remaining schedule).
_RESUMABLE_CHANGES = ("epochs", "device", "num_threads", "workers")


@dataclass
class FinetuneResult:
    """What a fine-tuning run achieved.

    Attributes:
        best_val_accuracy: highest validation top-1 accuracy of any epoch, a fraction in [0, 1].
        best_epoch: the 1-based epoch that reached it (the weights written to `out`).
        last_val_accuracy: validation accuracy after the last epoch (the weights left in the model).
        history: one dict per epoch, in order: epoch (1-based), train_loss (mean over the epoch's
            images), val_loss, val_accuracy (fraction), lr (of the epoch's last step), seconds (wall time
            of training plus validation).
    """

    best_val_accuracy: float
    best_epoch: int
    last_val_accuracy: float
    history: list[dict[str, float]]


def last_checkpoint_path(out: str | Path) -> Path:
    """Where `finetune` keeps the resumable state of a run writing `out`: finetuned.pt -> finetuned.last.pt."""
    return Path(out).with_suffix(".last.pt")


def finetune(
    model: nn.Module,
    train: Split,
    val: Split,
    mean: Sequence[float],
    std: Sequence[float],
    config: FinetuneConfig | None = None,
    *,
    teacher: nn.Module | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    save_fn: SaveFn = save_state_dict,
) -> FinetuneResult:
    """Fine-tune `model` on `train`, measuring top-1 accuracy on `val` after every epoch.

    The model is moved to `config.device` and trained in place; it ends with the last epoch's weights.
    Launched by torchrun with WORLD_SIZE > 1, every process calls this alike: it joins the process group
    (gloo on CPU, NCCL on CUDA; left again on return if it was not already joined), trains with
    DistributedDataParallel on disjoint shards of `train`, validates on disjoint shards of `val` and sums
    the counts, and only rank 0 writes files and shows progress. `out` must then be on a filesystem that
    every process can read (always so on one machine).

    Args:
        model: the classifier, e.g. a pruned network; maps normalized images to logits [N, classes].
        train, val: uint8 image sets in memory, or image files (`ImageFiles`: `train` streams through
            `config.workers` decoding processes, `val` is decoded once and cached); normalized with `mean`,
            `std` (per channel, of [0, 1] pixels).
        config: settings; None means FinetuneConfig().
        teacher: model distilled from when config.distill_alpha > 0 (moved to the device, put in eval mode).
        out: with it, the best epoch's model is written to `out` by `save_fn(model, path)` and the state
            to resume from (model, optimizer, epoch, history, best, config) to `last_checkpoint_path(out)`
            after every epoch, both atomically.
        resume: continue from `last_checkpoint_path(out)`; its config must match this one except for
            epochs, device, num_threads and workers. The remaining epochs give the same weights as an uninterrupted
            run with this config (bit-for-bit on the CPU with the same number of threads).
        force: start afresh when `out` or its resume state exists, removing both first.
        progress: show a progress bar over epochs on stderr.
        save_fn: writes the best model to a path; it must write atomically. Default: `save_state_dict`.

    Raises:
        AmcError: invalid settings; `out` cannot be written; `out` (or its resume state) exists without
            `resume` or `force`; `resume` without
            `out` or without a resume state, or with one from a different config or model; a
            training loss that is not finite.
    """
    config = config or FinetuneConfig()
    _check_config(config, teacher)
    out = Path(out) if out is not None else None
    _check_out(out, resume, force)
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    device_type = resolve_device(config.device).type
    joined_here = not (dist.is_available() and dist.is_initialized())
    rank, world_size = distributed.init_from_env("nccl" if device_type == "cuda" else "gloo")
    try:
        if device_type == "cuda" and world_size > 1:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        else:
            device = resolve_device(config.device)
        return _train(model, train, val, mean, std, config, teacher, out, resume, progress, save_fn,
                      device, rank, world_size)  # fmt: skip
    finally:
        if joined_here:
            distributed.cleanup()


def _train(
    model: nn.Module,
    train: Split,
    val: Split,
    mean: Sequence[float],
    std: Sequence[float],
    config: FinetuneConfig,
    teacher: nn.Module | None,
    out: Path | None,
    resume: bool,
    progress: bool,
    save_fn: SaveFn,
    device: torch.device,
    rank: int,
    world_size: int,
) -> FinetuneResult:
    """The body of `finetune` once the process group (if any) and the device are settled."""
    if config.batch_size % world_size:
        raise AmcError(
            f"batch size {config.batch_size} does not split evenly over {world_size} processes; "
            f"pass a --batch-size that is a multiple of {world_size}"
        )
    rank_batch = config.batch_size // world_size
    steps_per_epoch = math.ceil((len(train) // world_size) / rank_batch)
    if steps_per_epoch == 0:
        raise AmcError(f"{len(train)} training images cannot feed {world_size} processes; use more training images")
    total_steps = config.epochs * steps_per_epoch
    warmup_steps = min(config.warmup_epochs * steps_per_epoch, total_steps // 2)
    main = rank == 0

    # Image batches and conv kernels (4-D weights) in channels-last layout: ~1.4x faster CPU training, for
    # the models that accept it.
    layout = torch.channels_last if accepts_channels_last(model, train.shape) else torch.contiguous_format
    model.to(device, memory_format=layout)
    state = _load_last(last_checkpoint_path(out), config, model) if resume and out is not None else None
    net, module = _wrap(model, device, world_size)
    optimizer = torch.optim.SGD(
        _param_groups(module, config.weight_decay), lr=config.lr, momentum=config.momentum, nesterov=True
    )
    history: list[dict[str, float]] = []
    best_acc, best_epoch = -1.0, 0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        history, best_epoch = list(state["history"]), state["best_epoch"]
        best_acc = state.get("best_val_accuracy", state.get("best_val_acc"))  # the key's earlier name
    if teacher is not None and config.distill_alpha > 0:
        teacher.to(device, memory_format=layout).eval()
    else:
        teacher = None

    if isinstance(train, ImageSet):  # in memory: held on the device; files stream through CPU workers
        train = ImageSet(train.images.to(device), train.labels.to(device))
    # Validation shards keep every image (no rounding down as in `batches`): counts are summed exactly.
    val = val.subset(torch.arange(rank, len(val), world_size)).load()
    val = ImageSet(val.images.to(device), val.labels.to(device))
    augment = config.augment and train.shape[1] >= AUGMENT_MIN_SIZE

    # counted in steps, so that an epoch of ImageNet shows its progress; the description names the epoch
    bar = tqdm(
        initial=len(history) * steps_per_epoch, total=config.epochs * steps_per_epoch, desc="fine-tuning", unit="step",
        file=sys.stderr, disable=not (progress and main), dynamic_ncols=True,
    )  # fmt: skip
    try:  # the bar is closed before an error is reported, so the error starts its own line
        for epoch in range(len(history), config.epochs):
            start = time.perf_counter()
            net.train()
            generator = torch.Generator().manual_seed(config.seed + epoch)
            torch.manual_seed(int(np.random.SeedSequence([config.seed, epoch, rank]).generate_state(1)[0]))
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)  # summed on the device: no sync per step
            step = epoch * steps_per_epoch
            bar.set_description(f"fine-tuning epoch {epoch + 1}/{config.epochs}", refresh=False)
            for images, labels in batches(
                train, rank_batch, mean, std, shuffle=True, augment=augment, generator=generator,
                rank=rank, world_size=world_size, workers=config.workers,
            ):  # fmt: skip
                images = images.to(device, non_blocking=True).contiguous(memory_format=layout)
                labels = labels.to(device, non_blocking=True)
                lr = config.lr * _lr_factor(step, warmup_steps, total_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                loss = _loss(net(images), labels, images, teacher, config)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.detach() * len(labels)
                step += 1
                bar.update()
            loss_total, seen = _sum_over_ranks([float(loss_sum), len(train) // world_size], device, world_size)
            train_loss = loss_total / seen
            if not math.isfinite(train_loss):
                raise AmcError(f"training diverged (loss {train_loss}) in epoch {epoch + 1}; lower --lr")

            if world_size > 1:
                # Each rank's BatchNorm running statistics saw only its shard; use rank 0's, which are saved.
                for buffer in module.buffers():
                    dist.broadcast(buffer, src=0)
            if module is not model:
                model.load_state_dict(module.state_dict())
            val_acc, val_loss = _evaluate(module, val, mean, std, device, world_size, layout)
            history.append({
                "epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss, "val_accuracy": val_acc, "lr": lr,
                "seconds": time.perf_counter() - start,
            })  # fmt: skip
            if val_acc > best_acc:
                best_acc, best_epoch = val_acc, epoch + 1
                if main and out is not None:
                    save_fn(model, out)
            if main and out is not None:
                _save_last(last_checkpoint_path(out), model, optimizer, history, best_acc, best_epoch, config)
            bar.set_postfix(loss=f"{train_loss:.3f}", val=f"{val_acc:.2%}", best=f"{best_acc:.2%}")
    finally:
        bar.close()
    model.to(memory_format=torch.contiguous_format)
    # Nobody returns (and perhaps reads `out`) before rank 0 has written it.
    distributed.barrier()
    return FinetuneResult(best_acc, best_epoch, history[-1]["val_accuracy"], history)


def _check_config(config: FinetuneConfig, teacher: nn.Module | None) -> None:
    if config.epochs < 1 or config.batch_size < 1:
        raise AmcError(
            f"epochs {config.epochs} and batch size {config.batch_size} must both be at least 1; "
            "pass positive --epochs and --batch-size"
        )
    # written so that NaN fails every test: a NaN compares False with everything
    if not (0 < config.lr < math.inf and 0 <= config.weight_decay < 1 and 0 <= config.momentum < 1):
        raise AmcError(
            f"lr {config.lr}, weight decay {config.weight_decay}, momentum {config.momentum} are out of range; "
            "use a finite lr > 0, weight decay in [0, 1) and momentum in [0, 1)"
        )
    if not (config.warmup_epochs >= 0 and 0 <= config.label_smoothing < 1):
        raise AmcError(
            f"warm-up epochs {config.warmup_epochs} or label smoothing {config.label_smoothing} is out of range; "
            "use warm-up >= 0 and label smoothing in [0, 1)"
        )
    if config.workers is not None and config.workers < 0:
        raise AmcError(f"workers {config.workers} is negative; pass --workers 0 or more (0 decodes in the training "
                       "process)")
    if not (0 <= config.distill_alpha <= 1 and 0 < config.temperature < math.inf):
        raise AmcError(
            f"distillation alpha {config.distill_alpha} or temperature {config.temperature} is out of range; "
            "use alpha in [0, 1] and a temperature > 0"
        )
    if config.distill_alpha > 0 and teacher is None:
        raise AmcError(f"distillation alpha {config.distill_alpha} needs a teacher model; pass one or set alpha to 0")
    resolve_device(config.device)


def _check_out(out: Path | None, resume: bool, force: bool) -> None:
    """Refuse to overwrite an earlier run's files without `force` (which removes them), or to resume without
    them; check before any training that `out` can be written."""
    if out is None:
        if resume:
            raise AmcError("resuming needs the output file of the run to continue; pass its --out")
        return
    last = last_checkpoint_path(out)
    if resume and force:
        raise AmcError("--resume continues a fine-tuning and --force starts it afresh: pass one of them")
    if resume:
        if not last.is_file():
            raise AmcError(f"cannot resume: {last} does not exist (no epoch of that run had finished); "
                           "pass --force instead of --resume to start afresh")
        return
    existing = [p for p in (out, last) if p.exists()]
    if existing and not force:
        raise AmcError(f"{existing[0]} already exists; pass --resume to continue that run, --force to start afresh, "
                       "or choose another --out")
    check_writable(out)
    for path in existing:  # --force: the earlier run's model and resume state, nothing else
        path.unlink(missing_ok=True)  # under torchrun every rank removes them


def _load_last(path: Path, config: FinetuneConfig, model: nn.Module) -> dict[str, Any]:
    """Read a resume state written by `_save_last`, check it fits `config`, and load its weights into `model`."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise AmcError(
            f"cannot resume from {path}: not a readable torch file ({type(exc).__name__}); "
            "delete it and run without --resume"
        ) from None
    if not isinstance(state, dict) or state.get("format") != _LAST_FORMAT:
        raise AmcError(f"cannot resume from {path}: it is not a fine-tuning state; choose another --out")
    current = asdict(config)
    for key, value in current.items():
        saved = state["config"].get(key)
        if key not in _RESUMABLE_CHANGES and saved != value:
            raise AmcError(
                f"cannot resume from {path}: it was written with {key}={saved!r} but this run has {key}={value!r}; "
                "resume with the same settings (only epochs may grow) or choose another --out"
            )
    done = len(state["history"])
    if done > config.epochs:
        raise AmcError(
            f"{path} has already trained {done} epochs, more than the {config.epochs} asked; "
            f"pass --epochs {done} or more"
        )
    try:
        model.load_state_dict(state["model"])
    except RuntimeError:
        raise AmcError(
            f"cannot resume from {path}: its weights do not fit this model (another architecture or pruning); "
            "resume with the same model or choose another --out"
        ) from None
    return state


def _save_last(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    history: list[dict[str, float]],
    best_acc: float,
    best_epoch: int,
    config: FinetuneConfig,
) -> None:
    """Write everything a resumed run needs; no RNG state, since every epoch reseeds its generators."""
    state = {
        "format": _LAST_FORMAT,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "history": history,
        "best_val_accuracy": best_acc,
        "best_epoch": best_epoch,
        "config": asdict(config),
    }
    atomic_torch_save(state, path)


def _wrap(model: nn.Module, device: torch.device, world_size: int) -> tuple[nn.Module, nn.Module]:
    """(what to call in training, the plain module it trains); the same object without DDP."""
    if world_size == 1:
        return model, model
    if device.type == "cuda":
        # SyncBatchNorm normalizes over the global batch. It trains a copy, so `model` keeps plain
        # BatchNorm layers for `save_fn` and export; the copy's weights are loaded back every epoch.
        module = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(model))
        return DistributedDataParallel(module, device_ids=[device.index]), module
    # On CPU each rank normalizes its own shard's batch; DDP broadcasts rank 0's running statistics.
    return DistributedDataParallel(model), model


def _param_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay for kernels and weight matrices only; BatchNorm scales/shifts and biases (ndim <= 1) get none."""
    params = [p for p in module.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def _lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Multiplier of the peak lr at 0-based `step`: linear warm-up, then a cosine reaching 0 after the last step."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup_steps) / (total_steps - warmup_steps)))


def _loss(
    logits: torch.Tensor, labels: torch.Tensor, images: torch.Tensor, teacher: nn.Module | None, config: FinetuneConfig
) -> torch.Tensor:
    """Cross-entropy, blended with Hinton's distillation loss when there is a teacher; a scalar tensor."""
    ce = F.cross_entropy(logits, labels, label_smoothing=config.label_smoothing)
    if teacher is None:
        return ce
    with torch.no_grad():
        teacher_logits = teacher(images)
    t, a = config.temperature, config.distill_alpha
    # KL(p_teacher || p_student) from log-probabilities; T^2 keeps its gradients on the scale of CE's.
    student_log_p, teacher_log_p = F.log_softmax(logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1)
    kl = F.kl_div(student_log_p, teacher_log_p, reduction="batchmean", log_target=True)
    return (1 - a) * ce + a * t * t * kl


def _evaluate(
    module: nn.Module, val: ImageSet, mean: Sequence[float], std: Sequence[float], device: torch.device, world_size: int,
    layout: torch.memory_format = torch.contiguous_format,
) -> tuple[float, float]:
    """(top-1 accuracy, mean cross-entropy) over the validation shards of all ranks together."""
    correct, loss_sum = 0, 0.0
    for images, labels in batches(val, _EVAL_BATCH, mean, std):
        acc, loss = accuracy(module, images.contiguous(memory_format=layout), labels, batch_size=len(labels))
        correct += round(acc * len(labels))
        loss_sum += loss * len(labels)
    correct_total, loss_total, seen = _sum_over_ranks([correct, loss_sum, len(val)], device, world_size)
    return correct_total / seen, loss_total / seen


def _sum_over_ranks(values: list[float], device: torch.device, world_size: int) -> list[float]:
    """Each value summed over all processes (as float64 on `device`, which NCCL needs); unchanged with one process."""
    if world_size == 1:
        return values
    totals = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(totals)
    return totals.tolist()
