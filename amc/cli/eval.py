"""`amc eval`: accuracy, MACs, parameters and CPU latency of a model; `--compare DENSE PRUNED` side by side."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from amc.cli import command


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--split", choices=("test", "val"), default="test",
                        help="test split, or val: the seeded held-out part of TRAIN (--val-size, --seed)")
    parser.add_argument("--compare", nargs=2, metavar=("DENSE", "PRUNED"),
                        help="compare two models (--checkpoint belongs to DENSE): accuracy, MACs, params, "
                             "CPU latency at batch 1 and 64, speed-up")
    parser.add_argument("--channels-last", action="store_true",
                        help="time the models in channels-last memory layout, usually the faster one on a CPU")


@command(
    "eval", "accuracy, MACs, parameters and CPU latency of a model (dense, or an amc pruned-model file)",
    shared=("device", "model", "checkpoint", "dataset", "data_dir", "seed", "val_size"),
    required=("dataset",),
    arguments=_arguments,
)
def run(args: argparse.Namespace) -> int:

    import torch

    from amc.cli import common
    from amc.data.datasets import load_dataset
    from amc.data.split import split_train_val
    from amc.engine.cost import count_macs_params
    from amc.engine.measure import latency
    from amc.errors import AmcError
    from amc.reward import split_accuracy

    device = torch.device(args.device)  # resolved (and checked) by amc.cli.main
    if args.compare:
        return _compare(args.compare, args.checkpoint, args.dataset, args.data_dir, args.image_size,
                        args.channels_last, args.json, device)
    if not args.model:
        raise AmcError("eval needs --model MODEL (or --compare DENSE PRUNED)")
    data = load_dataset(args.dataset, args.data_dir, image_size=args.image_size)
    common.warn_if_untrained(args.model, args.checkpoint, "evaluating")
    trained = common.trained_model(args.model, args.checkpoint, data)
    trained.module.to(device)
    if args.split == "test":
        split = data.test
    else:
        _, val_idx = split_train_val(len(data.train), args.val_size, args.seed)
        split = data.train.subset(val_idx)
    acc, _ = split_accuracy(trained.module, split, trained.mean, trained.std)
    macs, params = count_macs_params(trained.module, trained.input_shape)
    channels_last = _layout(args.channels_last, [trained.module], trained.input_shape)
    ms = latency(trained.module, trained.input_shape, channels_last=channels_last, device=device)
    threads = torch.get_num_threads()
    layout = "channels-last" if channels_last else "contiguous"
    where = f"{threads} CPU thread{'s' if threads != 1 else ''}" if device.type == "cpu" else str(device)
    if args.json:
        common.print_json({"model": args.model, "split": args.split, "accuracy": acc, "images": len(split),
                           "macs": macs, "params": params, "latency_ms": ms, "device": str(device),
                           "threads": threads, "layout": layout})
        return 0
    common.print_rows([
        ("model", args.model),
        ("split", f"{args.split} ({len(split)} images)"),
        ("accuracy", f"{100 * acc:.2f}%"),
        ("MACs", f"{macs:,}"),
        ("params", f"{params:,}"),
        ("latency", f"{ms:.3f} ms (batch 1, {where}, {layout} layout)"),
    ])
    return 0


def _compare(specs: list[str], checkpoint: str | None, dataset: str, data_dir: str | None, image_size: int | None,
             channels_last: bool, as_json: bool, device: Any) -> int:
    """One table for a dense and a pruned model on the test split, latency as medians of repeated runs."""
    import torch

    from amc.cli import common
    from amc.data.datasets import load_dataset
    from amc.engine.cost import count_macs_params
    from amc.engine.measure import latencies
    from amc.reward import split_accuracy

    data = load_dataset(dataset, data_dir, image_size=image_size)
    threads = torch.get_num_threads()
    models, rows = [], []
    for spec, weights in zip(specs, (checkpoint, None)):
        common.warn_if_untrained(spec, weights, "comparing")
        trained = common.trained_model(spec, weights, data)
        trained.module.to(device)
        acc, _ = split_accuracy(trained.module, data.test, trained.mean, trained.std)
        macs, params = count_macs_params(trained.module, trained.input_shape)
        models.append(trained.module)
        rows.append({"model": spec, "test_accuracy": acc, "macs": macs, "params": params})
    channels_last = _layout(channels_last, models, trained.input_shape)
    layout = "channels-last" if channels_last else "contiguous"
    for b in (1, 64):  # both models in each round of timing, so the machine's load hits them alike
        for row, ms in zip(rows, latencies(models, trained.input_shape, b, channels_last=channels_last, device=device)):
            row[f"latency_ms_batch{b}"] = ms
    dense, pruned = rows
    speedup = {b: dense[f"latency_ms_batch{b}"] / pruned[f"latency_ms_batch{b}"] for b in (1, 64)}
    if as_json:
        common.print_json({"models": rows, "speedup_batch1": speedup[1], "speedup_batch64": speedup[64],
                           "device": str(device), "threads": threads, "layout": layout})
        return 0
    print(f"{'model':<28}{'test acc':>9}{'MACs':>14}{'params':>11}{'ms @1':>9}{'ms @64':>9}")
    for r in rows:
        print(f"{Path(r['model']).name:<28}{100 * r['test_accuracy']:>8.2f}%{r['macs']:>14,}{r['params']:>11,}"
              f"{r['latency_ms_batch1']:>9.2f}{r['latency_ms_batch64']:>9.1f}")
    where = f"CPU, {threads} thread{'s' * (threads != 1)}" if device.type == "cpu" else str(device)
    print(f"speed-up: {speedup[1]:.2f}x at batch 1, {speedup[64]:.2f}x at batch 64 "
          f"(median latency, {where}, {layout} layout); MACs {dense['macs'] / pruned['macs']:.2f}x fewer")
    return 0


def _layout(channels_last: bool, models: list, input_shape: tuple[int, ...]) -> bool:
    """--channels-last where every model runs in that layout; otherwise contiguous, with a warning."""
    import warnings

    from amc.engine.measure import accepts_channels_last

    if channels_last and not all(accepts_channels_last(m, input_shape) for m in models):
        warnings.warn("the model does not run in channels-last layout (e.g. it flattens with x.view(...)); "
                      "timing it contiguous")
        return False
    return channels_last
