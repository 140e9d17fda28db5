"""`amc finetune`: fine-tune a pruned-model file; under `torchrun` with DistributedDataParallel. The flags and
the run of fine-tuning are shared with `amc apply --finetune-epochs`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from amc.cli import COUNT, THREADS, command, number, unsafe_unpickle_flag
from amc.train.config import FinetuneConfig

# `--export` formats; `amc.export.EXPORT_FORMATS` is the source (a test checks they agree), kept here so that
# `--help` does not import torch.
EXPORT_FORMATS = ("program", "onnx", "torchscript")


def finetune_arguments(parser: argparse.ArgumentParser, epochs: int) -> None:
    """The fine-tuning flags; `epochs` 0 names the epochs flag `--finetune-epochs` (apply), else `--epochs`."""
    defaults = FinetuneConfig()
    flag = "--epochs" if epochs else "--finetune-epochs"
    parser.add_argument(flag, dest="finetune_epochs", type=COUNT if epochs else number(int, 0, 10**9), default=epochs,
                        help="epochs of fine-tuning (default %(default)s)")
    parser.add_argument("--lr", type=number(float, 0.0, 10.0, low_open=True), default=defaults.lr,
                        help="peak SGD learning rate for batch 128 (default %(default)s)")
    parser.add_argument("--batch-size", type=COUNT, default=defaults.batch_size,
                        help="images per step (default %(default)s)")
    parser.add_argument("--weight-decay", type=number(float, 0.0, 1.0, high_open=True), default=defaults.weight_decay,
                        help="(default %(default)s)")
    parser.add_argument("--label-smoothing", type=number(float, 0.0, 1.0, high_open=True),
                        default=defaults.label_smoothing, help="(default %(default)s)")
    parser.add_argument("--distill-alpha", type=number(float, 0.0, 1.0), default=defaults.distill_alpha,
                        help="weight of distillation from the dense model (default %(default)s: none)")
    parser.add_argument("--threads", type=THREADS, help="torch CPU threads (default: torch's)")
    parser.add_argument("--workers", type=number(int, 0, 256), metavar="N",
                        help="processes decoding image files (--image-size) ahead of training (default: one per "
                             "core but one, at most 8; 0: in the training process)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted fine-tuning of --out")
    parser.add_argument("--export", choices=EXPORT_FORMATS, action="append", default=[],
                        help="also write OUT.pt2 (a torch.export program, loads with plain torch), OUT.onnx, or "
                             "OUT.torchscript.pt (deprecated by torch); repeatable")


def finetune_config(args: argparse.Namespace) -> FinetuneConfig:
    """The `FinetuneConfig` of the fine-tuning flags."""
    return FinetuneConfig(epochs=args.finetune_epochs, batch_size=args.batch_size, lr=args.lr,
                          weight_decay=args.weight_decay, label_smoothing=args.label_smoothing,
                          distill_alpha=args.distill_alpha, seed=args.seed, num_threads=args.threads,
                          workers=args.workers, device=args.device)


def finetune_and_save(pruned: Any, data: Any, config: FinetuneConfig, out: str, *, val_size: int | None,
                      resume: bool, force: bool, teacher: Any = None) -> None:
    """Fine-tune the `PrunedModel` on the TRAIN split less `val`, keeping the best epoch on `val` in `out`."""
    from amc.data.split import split_train_val
    from amc.train import distributed
    from amc.train.finetune import finetune, last_checkpoint_path

    train_idx, val_idx = split_train_val(len(data.train), val_size, config.seed)
    try:
        result = finetune(pruned.module, data.train.subset(train_idx), data.train.subset(val_idx), pruned.mean,
                          pruned.std, config, teacher=teacher if config.distill_alpha > 0 else None, out=out,
                          resume=resume, force=force, save_fn=lambda model, path: pruned.with_module(model).save(path))
    except KeyboardInterrupt:
        if last_checkpoint_path(out).is_file():
            raise KeyboardInterrupt(f"every finished epoch is kept beside {out}: continue with the same "
                                    "arguments plus --resume") from None
        raise KeyboardInterrupt("no epoch had finished, so nothing was kept: run the same command again") from None
    if distributed.is_main():
        print(f"fine-tuned {config.epochs} epoch{'s' * (config.epochs != 1)}: best val accuracy "
              f"{100 * result.best_val_accuracy:.2f}% (epoch {result.best_epoch}), written to {out}", file=sys.stderr)


def _arguments(parser: argparse.ArgumentParser) -> None:
    finetune_arguments(parser, epochs=FinetuneConfig.epochs)
    parser.add_argument("--teacher", metavar="MODEL", help="dense model to distill from (with --distill-alpha)")
    parser.add_argument("--teacher-checkpoint", metavar="FILE", help="the teacher's weights")
    unsafe_unpickle_flag(parser)


@command(
    "finetune", "fine-tune a pruned-model file (SGD, Nesterov, cosine); runs under torchrun for DDP",
    shared=("device", "model", "dataset", "data_dir", "out", "force", "seed", "val_size"),
    required=("model", "dataset", "out"),
    arguments=_arguments,
)
def run(args: argparse.Namespace) -> int:
    from amc.cli import common
    from amc.errors import AmcError

    if not common.is_model_file(args.model):
        raise AmcError(f"finetune takes an amc pruned-model file (from amc apply); {args.model} is not a file")
    with common.output_lock(args.out):
        return _finetune(args)


def _finetune(args: argparse.Namespace) -> int:
    from amc.cli import common
    from amc.data.datasets import load_dataset
    from amc.errors import AmcError
    from amc.models.pruned import load_model
    from amc.models.trained import load_trained_model
    from amc.reward import split_accuracy
    from amc.train import distributed

    data = load_dataset(args.dataset, args.data_dir, image_size=args.image_size)
    pruned = common.pruned_model_file(args.model, data)
    teacher = None
    if args.teacher:
        teacher = load_trained_model(args.teacher, args.teacher_checkpoint, dataset=data).module
    elif args.distill_alpha > 0:
        raise AmcError("--distill-alpha needs --teacher MODEL (and --teacher-checkpoint FILE): the dense model")
    finetune_and_save(pruned, data, finetune_config(args), args.out, val_size=args.val_size, resume=args.resume,
                      force=args.force, teacher=teacher)
    if not distributed.is_main():  # under torchrun, rank 0 alone measures, exports and reports
        return 0
    best = load_model(args.out)
    acc, _ = split_accuracy(best, data.test, pruned.mean, pruned.std)
    common.export_all(best, pruned.input_shape, args.out, args.export)
    if args.json:
        common.print_json({"out": args.out, "test_accuracy": acc, "epochs": args.finetune_epochs})
    else:
        print(f"wrote {args.out}: test accuracy {100 * acc:.2f}%")
    return 0
