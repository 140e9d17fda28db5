"""Benchmark: apply policies, fine-tune, measure TEST accuracy and CPU latency against the dense model.

For each policy file (e.g. the AMC search's best policy and the uniform policy at the same budget) the
model is pruned with re-fit (`amc.apply_policy`), fine-tuned with amc's defaults for `--epochs` epochs
(SGD + Nesterov, cosine, standard CIFAR augmentation, best epoch on val; `--distill-alpha` adds
distillation from the dense model), and measured: test accuracy, MACs, params, and the median CPU latency
at batch 1 and 64 against the dense model. The best epoch of each is written to `WORK/<model>-<name>.pt`
as an amc model file (`amc.load_model` opens it). Writes `bench/results/finetune_<model>[_<tag>].json` and
`.md`.

    python bench/finetune.py --model resnet56 --checkpoint ../shared/weights/resnet56-cifar10jpg.pt \
        --data-dir DIR --policy amc=runs/r56/best_policy.json --policy uniform=uniform.json --epochs 30 \
        [--distill-alpha 0.9]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import common  # bench/common.py; puts the repository on sys.path

from amc.apply import apply_policy
from amc.engine.cost import count_macs_params
from amc.models.pruned import PrunedModel, load_model
from amc.policy import Policy
from amc.reward import Task
from amc.train.config import FinetuneConfig
from amc.train.finetune import finetune, last_checkpoint_path


def finetune_policy(task: Task, policy_file: str | Path, out: Path,
                    args: argparse.Namespace) -> tuple[PrunedModel, dict[str, Any]]:
    """Apply the policy of `policy_file` to the task's model, fine-tune it (resuming `out`'s run if it has
    a resume state) and write its best epoch to `out` as an amc model file. Returns the fine-tuned model,
    holding that best epoch's weights, and its row: test accuracy before and after, best val accuracy,
    MACs, params, seconds."""
    pruned = apply_policy(task, Policy.load(policy_file))
    before = task.test_accuracy(pruned.module)
    train, val = task.dataset.train.subset(task.train_idx), task.dataset.train.subset(task.val_idx)
    started = time.monotonic()
    result = finetune(pruned.module, train, val, task.model.mean, task.model.std,
                      FinetuneConfig(epochs=args.epochs, seed=args.seed, distill_alpha=args.distill_alpha),
                      teacher=task.pruner.model if args.distill_alpha > 0 else None, out=out,
                      resume=last_checkpoint_path(out).exists(),
                      save_fn=lambda module, path: pruned.with_module(module).save(path))
    pruned.module.load_state_dict(load_model(out).state_dict())  # the best epoch's weights, from its file
    macs, params = count_macs_params(pruned.module, task.model.input_shape)
    return pruned, {"test_accuracy_before_finetune": before, "test_accuracy": task.test_accuracy(pruned.module),
                    "best_val_accuracy": result.best_val_accuracy, "macs": macs, "params": params,
                    "finetune_seconds": time.monotonic() - started}


def run(args: argparse.Namespace, results: str | Path = common.RESULTS) -> tuple[dict[str, Any], list[PrunedModel]]:
    """The benchmark for parsed `args`: writes `finetune_<model>.json`/`.md` under `results` and the
    fine-tuned models under `args.work`; returns the summary and the fine-tuned models, in policy order."""
    task = common.task_from_args(args)
    shape = task.model.input_shape
    dense = task.pruner.model
    dense_macs, dense_params = count_macs_params(dense, shape)
    rows = [{"policy": "dense", "test_accuracy": task.test_accuracy(dense), "macs": dense_macs,
             "params": dense_params}]
    pruned_models = []
    for item in args.policy:
        name, path = item.split("=", 1)
        pruned, row = finetune_policy(task, path, Path(args.work) / f"{args.model}-{name}.pt", args)
        pruned_models.append(pruned)
        rows.append({"policy": name, "file": path, **row})
        print(rows[-1], flush=True)
    for row, timed in zip(rows, common.latencies([dense] + [p.module for p in pruned_models], shape)):
        row.update(timed)
    summary = common.summary("finetune", args, model=args.model, epochs=args.epochs,
                             distill_alpha=args.distill_alpha, rows=rows)
    lines = [
        f"# {args.model}: pruned and fine-tuned {args.epochs} epochs"
        + (f", distilled from the dense model (alpha {args.distill_alpha})" if args.distill_alpha > 0 else "")
        + " (test accuracy %, CPU latency ms, median)",
        "",
        common.header(summary),
        "",
        "Latency: contiguous / channels-last memory layout, BatchNorm folded into the convs, all models timed in "
        "interleaved rounds.",
        "",
        "| policy | before FT | after FT | MACs | params | ms @1 | ms @64 | speed-up @1 | speed-up @64 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        before = f"{100 * r['test_accuracy_before_finetune']:.2f}" if "test_accuracy_before_finetune" in r else "-"
        lines.append(f"| {r['policy']} | {before} | {100 * r['test_accuracy']:.2f} | {r['macs']:,} | {r['params']:,} | "
                     + common.latency_cells(r))
    common.write(f"finetune_{args.model}" + (f"_{args.tag}" if args.tag else ""), summary, lines, results)
    return summary, pruned_models


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = common.parser("finetune", __doc__)
    common.add_common_args(parser, weights="checkpoint", val_size=True, threads=2)
    parser.add_argument("--policy", action="append", required=True, metavar="NAME=FILE")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--distill-alpha", type=float, default=0.0,
                        help="weight of distillation from the dense model (0: plain cross-entropy)")
    parser.add_argument("--work", default=str(common.ROOT / "runs" / "bench-finetune"),
                        help="folder of the fine-tuned models (resumable)")
    parser.add_argument("--tag", default="", help="suffix of the results' file names, to keep several experiments")
    return common.parse_args(parser, argv)


def main(argv: list[str] | None = None, results: str | Path = common.RESULTS) -> None:
    run(parse_args(argv), results)


if __name__ == "__main__":
    main()
