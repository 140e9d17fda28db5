"""Benchmark: what the fast evaluation's parts are worth, at the uniform policy, on TEST.

For each model and channel selection (`l1`: AMC's reference magnitude ranking; `ls`: greedy least
squares, the default): the uniform policy at the FLOPs budget, evaluated on the test split with channel
selection only, with the least-squares re-fit from the original network's statistics, with BatchNorm
re-estimation, with both, and with the sequential re-fit on the pruned network's own inputs plus BatchNorm
re-estimation (the search's evaluation). No fine-tuning. Writes `bench/results/reconstruction.json` and `.md`.

    python bench/reconstruction.py --data-dir DIR --weights ../shared/weights
"""

from __future__ import annotations

import time
from pathlib import Path

import common  # bench/common.py; puts the repository on sys.path

from amc.engine.budget import uniform_counts
from amc.engine.cost import count_macs_params
from amc.reward import RewardEvaluator

VARIANTS = {  # name: (least-squares re-fit, BatchNorm re-estimation)
    "selection only": ("none", False),
    "re-fit": ("gram", False),
    "BN re-estimation": ("none", True),
    "re-fit + BN": ("gram", True),
    "sequential re-fit + BN (search default)": ("sequential", True),
}
# Held-out TRAIN images: this benchmark measures on TEST and never reads them, but their number decides
# which TRAIN images the calibration and re-fit samples come from, so it stays that of the committed results.
VAL_SIZE = 1000


def main(argv: list[str] | None = None, results: str | Path = common.RESULTS) -> None:
    parser = common.parser("reconstruction", __doc__)
    common.add_common_args(parser, weights="dir", threads=2)
    parser.add_argument("--target-flops", type=float, default=0.5)
    parser.add_argument("--selections", default="l1,ls")
    args = common.parse_args(parser, argv)
    rows = []
    for (model, checkpoint), selection in ((m, s) for m in common.models(args) for s in args.selections.split(",")):
        started = time.monotonic()
        task = common.task_from_args(args, model=model, checkpoint=checkpoint, val_size=VAL_SIZE, selection=selection)
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
        rows.append(row)
        print(row, flush=True)
    summary = common.summary("reconstruction", args, budget={"kind": "flops", "ratio": args.target_flops},
                             policy="uniform", results=rows)
    lines = [
        f"# Fast evaluation at the uniform {round(100 * args.target_flops)}% FLOPs policy (test accuracy %, "
        "no fine-tuning)",
        "",
        common.header(summary),
        "Selection: l1 = magnitude of the consuming weights (AMC's reference), ls = greedy least squares "
        "(default). Re-fit: least squares from the original network's inputs on 3,000 calibration images (10 "
        "positions each) of the train split; BN: statistics re-estimated on 256 train images; sequential re-fit: "
        "each re-fitted layer sees the pruned network's inputs on those 256 images (64 positions each).",
        "",
        "| model | selection | dense | " + " | ".join(VARIANTS) + " | MACs ratio |",
        "|---|---|---|" + "---|" * len(VARIANTS) + "---|",
    ]
    for row in rows:
        cells = " | ".join(f"{100 * row[name]:.2f}" for name in VARIANTS)
        lines.append(f"| {row['model']} | {row['selection']} | {100 * row['dense_test_accuracy']:.2f} | {cells} | "
                     f"{row['macs_ratio']:.4f} |")
    common.write("reconstruction", summary, lines, results)


if __name__ == "__main__":
    main()
