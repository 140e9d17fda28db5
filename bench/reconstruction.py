"""Benchmark: what the fast evaluation's parts are worth, at the uniform policy, on TEST.

For each model and channel selection (`l1`: AMC's reference magnitude ranking; `ls`: greedy least
squares, the default): the uniform policy at the FLOPs budget, evaluated on the test split with channel
selection only, with the least-squares re-fit from the original network's statistics, with BatchNorm
re-estimation, with both, and with the sequential re-fit on the pruned network's own inputs plus BatchNorm
re-estimation (the search's evaluation). No fine-tuning. Writes `bench/results/reconstruction.json` and `.md`.

    python bench/reconstruction.py --data-dir DIR --weights ../shared/weights
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import common  # noqa: E402  (bench/common.py; puts the repository on sys.path)

from amc.engine.budget import uniform_counts  # noqa: E402
from amc.engine.cost import count_macs_params  # noqa: E402
from amc.reward import RewardEvaluator, prepare_task  # noqa: E402

VARIANTS = {  # name: (least-squares re-fit, BatchNorm re-estimation)
    "selection only": ("none", False),
    "re-fit": ("gram", False),
    "BN re-estimation": ("none", True),
    "re-fit + BN": ("gram", True),
    "sequential re-fit + BN (search default)": ("sequential", True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--weights", default=str(common.ROOT.parent / "shared" / "weights"))
    parser.add_argument("--models", default="resnet20,resnet56")
    parser.add_argument("--target-flops", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--selections", default="l1,ls")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = []
    for model, selection in ((m, s) for m in args.models.split(",") for s in args.selections.split(",")):
        started = time.monotonic()
        task = prepare_task(model, Path(args.weights) / f"{model}-cifar10jpg.pt", "imagefolder", args.data_dir,
                            val_size=1000, seed=args.seed, selection=selection)
        pruner, base = task.pruner, task.evaluator
        dense_macs = int(pruner.cost.macs(pruner.channels))
        counts = uniform_counts(pruner, pruner.cost.macs, args.target_flops * dense_macs)
        row = {"model": model, "selection": selection, "dense_test_accuracy": task.test_accuracy(pruner.model),
               "dense_macs": dense_macs}
        for name, (refit, bn) in VARIANTS.items():
            evaluator = base if refit == base.reconstruct and bn else RewardEvaluator(
                pruner, base.val_x, base.val_y, refit_x=base.refit_x if bn else None, reconstruct=refit)
            pruned = evaluator.prune(counts)
            row[name] = task.test_accuracy(pruned)
        macs, params = count_macs_params(pruned, task.model.input_shape)
        row.update(pruned_macs=macs, macs_ratio=macs / dense_macs, pruned_params=params,
                   seconds=time.monotonic() - started)
        results.append(row)
        print(row, flush=True)
    summary = {
        "benchmark": "reconstruction",
        "budget": {"kind": "flops", "ratio": args.target_flops},
        "policy": "uniform",
        "command": common.command("reconstruction.py"),
        "seed": args.seed,
        "machine": common.machine(args.threads),
        "results": results,
    }
    lines = [
        f"# Fast evaluation at the uniform {round(100 * args.target_flops)}% FLOPs policy (test accuracy %, no fine-tuning)",
        "",
        f"Command: `{summary['command']}`; seed {args.seed}; machine: {summary['machine']}.",
        "Selection: l1 = magnitude of the consuming weights (AMC's reference), ls = greedy least squares "
        "(default). Re-fit: least squares from the original network's inputs on 3,000 calibration images (10 "
        "positions each) of the train split; BN: statistics re-estimated on 256 train images; sequential re-fit: "
        "each re-fitted layer sees the pruned network's inputs on those 256 images (64 positions each).",
        "",
        "| model | selection | dense | " + " | ".join(VARIANTS) + " | MACs ratio |",
        "|---|---|---|" + "---|" * len(VARIANTS) + "---|",
    ]
    for row in results:
        cells = " | ".join(f"{100 * row[name]:.2f}" for name in VARIANTS)
        lines.append(f"| {row['model']} | {row['selection']} | {100 * row['dense_test_accuracy']:.2f} | {cells} | "
                     f"{row['macs_ratio']:.4f} |")
    common.write("reconstruction", summary, lines)


if __name__ == "__main__":
    main()
