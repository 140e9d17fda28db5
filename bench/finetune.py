"""Benchmark: apply policies, fine-tune, measure TEST accuracy and CPU latency against the dense model.

For each policy file (e.g. the AMC search's best policy and the uniform policy at the same budget) the
model is pruned with re-fit, fine-tuned with amc's defaults for `--epochs` epochs (SGD + Nesterov, cosine,
standard CIFAR augmentation, best epoch on val; `--distill-alpha` adds distillation from the dense model),
and measured: test accuracy, MACs, params, and the
median CPU latency at batch 1 and 64 against the dense model. Writes
`bench/results/finetune_<model>.json` and `.md`.

    python bench/finetune.py --model resnet56 --checkpoint ../shared/weights/resnet56-cifar10jpg.pt \
        --data-dir DIR --policy amc=runs/r56/best_policy.json --policy uniform=uniform.json --epochs 30 \
        [--distill-alpha 0.9]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import common  # noqa: E402  (bench/common.py; puts the repository on sys.path)

from amc.train.finetune import FinetuneConfig, finetune  # noqa: E402
from amc.engine.cost import count_macs_params  # noqa: E402
from amc.policy import Policy  # noqa: E402
from amc.reward import prepare_task  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--policy", action="append", required=True, metavar="NAME=FILE")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--val-size", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--distill-alpha", type=float, default=0.0,
                        help="weight of distillation from the dense model (0: plain cross-entropy)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", default=str(common.ROOT / "runs" / "bench-finetune"), help="fine-tuned models (resumable)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    task = prepare_task(args.model, args.checkpoint, "imagefolder", args.data_dir, val_size=args.val_size,
                        seed=args.seed)
    shape = task.model.input_shape
    dense = task.pruner.model
    dense_macs, dense_params = count_macs_params(dense, shape)
    rows = [{"policy": "dense", "test_accuracy": task.test_accuracy(dense), "macs": dense_macs,
             "params": dense_params}]
    models = [dense]
    train, val = task.dataset.train.subset(task.train_idx), task.dataset.train.subset(task.val_idx)
    for item in args.policy:
        name, path = item.split("=", 1)
        counts = Policy.load(path).counts_for(task.pruner)
        model = task.evaluator.prune(counts).to(memory_format=torch.contiguous_format)
        before = task.test_accuracy(model)
        out = Path(args.work) / f"{args.model}-{name}.pt"
        started = time.monotonic()
        result = finetune(model, train, val, task.model.mean, task.model.std,
                          FinetuneConfig(epochs=args.epochs, seed=args.seed, distill_alpha=args.distill_alpha),
                          teacher=dense if args.distill_alpha > 0 else None, out=out,
                          resume=out.with_suffix(".last.pt").exists())
        model.load_state_dict(torch.load(out, weights_only=True)["state_dict"])
        macs, params = count_macs_params(model, shape)
        models.append(model)
        rows.append({"policy": name, "file": path, "test_accuracy_before_finetune": before,
                     "test_accuracy": task.test_accuracy(model), "best_val_accuracy": result.best_val_accuracy,
                     "macs": macs, "params": params, "finetune_seconds": time.monotonic() - started})
        print(rows[-1], flush=True)
    for row, timed in zip(rows, common.latencies(models, shape)):
        row.update(timed)
    summary = {
        "benchmark": "finetune",
        "model": args.model,
        "command": common.command("finetune.py"),
        "seed": args.seed,
        "epochs": args.epochs,
        "distill_alpha": args.distill_alpha,
        "machine": common.machine(args.threads),
        "rows": rows,
    }
    lines = [
        f"# {args.model}: pruned and fine-tuned {args.epochs} epochs"
        + (f", distilled from the dense model (alpha {args.distill_alpha})" if args.distill_alpha > 0 else "")
        + " (test accuracy %, CPU latency ms, median)",
        "",
        f"Command: `{summary['command']}`; seed {args.seed}; machine: {summary['machine']}.",
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
    common.write(f"finetune_{args.model}", summary, lines)


if __name__ == "__main__":
    main()
