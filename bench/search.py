"""Benchmark: AMC search vs the uniform policy on a real pretrained model, measured on TEST.

Runs (or resumes) `amc train-agent` for one model and FLOPs budget in the run folder
`RUNS/bench-<model>_f<pct>_v<reward images>_s<seed>` (shared with bench/baselines.py's AMC runs of the same
settings), then evaluates the best AMC policy and the uniform policy through the same fast evaluation
(channel selection, least-squares re-fit, BatchNorm re-estimation; no fine-tuning) on the test split.
Writes `bench/results/search_<model>_f<pct>.json` and `.md` (`..._s<seed>` for a seed other than 0).

    python bench/search.py --model resnet56 --target-flops 0.5 --data-dir DIR \
        --checkpoint ../shared/weights/resnet56-cifar10jpg.pt --episodes 300 --warmup 100 --val-size 5000
"""

from __future__ import annotations

import copy
import csv
import statistics
import time
from pathlib import Path

import common  # bench/common.py; puts the repository on sys.path
import numpy as np
import torch

from agents.search import run_search
from amc.engine.measure import accuracy
from amc.reward import Task


def paired_timing(task: Task, counts: np.ndarray, repeats: int = 3) -> tuple[float, float]:
    """Median seconds of one dense forward pass over the reward split (channels-last, as the search runs
    its pruned models) and of one episode's evaluation of `counts`, measured alternately."""
    dense_model = copy.deepcopy(task.pruner.model).to(memory_format=torch.channels_last)
    dense, episode = [], []
    for _ in range(repeats):
        started = time.monotonic()
        accuracy(dense_model, task.evaluator.val_x, task.evaluator.val_y)
        dense.append(time.monotonic() - started)
        started = time.monotonic()
        task.evaluator(counts)
        episode.append(time.monotonic() - started)
    return statistics.median(dense), statistics.median(episode)


def main(argv: list[str] | None = None, results: str | Path = common.RESULTS) -> None:
    parser = common.parser("search", __doc__)
    common.add_common_args(parser, weights="checkpoint", val_size=True, runs=True)
    common.add_search_args(parser)
    args = common.parse_args(parser, argv)
    common.resolve_val_size(args)
    config = common.in_run_folder(args.runs, common.search_config(
        args, budget_ratio=args.target_flops, episodes=args.episodes, warmup=args.warmup))
    task = config.prepare_task()
    resume = (Path(config.out) / "config.json").exists()
    result = run_search(config, resume=resume, progress=False, task=task)
    with open(Path(config.out) / "episodes.csv", newline="") as f:
        episode_seconds = [float(r["seconds"]) for r in csv.DictReader(f)]
    best = result.best.counts_for(task.pruner)
    dense_val_seconds, episode_eval_seconds = paired_timing(task, best)

    rows = {}
    dense_test = task.test_accuracy(task.pruner.model)
    dense_macs = task.pruner.cost.macs(task.pruner.channels)
    for name, counts in (("uniform", result.uniform.counts_for(task.pruner)), ("amc", best)):
        pruned = task.evaluator.prune(counts)  # pruned and re-fitted once, measured on both splits
        rows[name] = {
            "test_accuracy": task.test_accuracy(pruned),
            "val_accuracy": accuracy(pruned, task.evaluator.val_x, task.evaluator.val_y)[0],
            "macs": int(task.pruner.cost.macs(counts)),
            "macs_ratio": float(task.pruner.cost.macs(counts) / dense_macs),
            "counts": [int(c) for c in counts],
        }
    summary = common.summary(
        "search", args,
        model=args.model,
        budget={"kind": "flops", "ratio": args.target_flops},
        episodes=result.episodes,
        warmup=args.warmup,
        val_size=args.val_size,
        dense_test_accuracy=dense_test,
        policies=rows,
        amc_minus_uniform_points=100 * (rows["amc"]["test_accuracy"] - rows["uniform"]["test_accuracy"]),
        median_episode_seconds=statistics.median(episode_seconds),
        dense_val_forward_seconds=dense_val_seconds,
        episode_evaluation_seconds=episode_eval_seconds,
        search_seconds=sum(episode_seconds),
    )
    table = [
        f"# AMC search vs uniform: {args.model}, {round(100 * args.target_flops)}% FLOPs (no fine-tuning)",
        "",
        common.header(summary),
        f"Reward: accuracy on {args.val_size} held-out TRAIN images; {result.episodes} episodes "
        f"({args.warmup} warm-up).",
        "",
        "| policy | MACs ratio | val acc (%) | test acc (%) |",
        "|---|---|---|---|",
        f"| dense | 1.000 | - | {100 * dense_test:.2f} |",
    ]
    for name, row in rows.items():
        table.append(f"| {name} | {row['macs_ratio']:.3f} | {100 * row['val_accuracy']:.2f} | "
                     f"{100 * row['test_accuracy']:.2f} |")
    table += ["", f"Median episode in the search: {summary['median_episode_seconds']:.2f} s; search: "
              f"{summary['search_seconds'] / 60:.1f} min. Measured back to back after the search (medians of 3): "
              f"one episode's evaluation {episode_eval_seconds:.2f} s, one dense forward pass over the reward split "
              f"{dense_val_seconds:.2f} s (ratio {episode_eval_seconds / dense_val_seconds:.2f})."]
    tag = common.search_tag(args.model, args.target_flops, args.seed, args.channel_round)
    common.write(f"search_{tag}", summary, table, results)


if __name__ == "__main__":
    main()
