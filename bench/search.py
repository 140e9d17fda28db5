"""Benchmark: AMC search vs the uniform policy on a real pretrained model, measured on TEST.

Runs (or resumes) `amc train-agent` for one model and FLOPs budget, then evaluates the best AMC policy
and the uniform policy through the same fast evaluation (channel selection, least-squares re-fit,
BatchNorm re-estimation; no fine-tuning) on the test split. Writes `bench/results/search_<model>_f<pct>.json`
and `.md` (`..._s<seed>` for a seed other than 0).

    python bench/search.py --model resnet56 --target-flops 0.5 --data-dir DIR \
        --checkpoint ../shared/weights/resnet56-cifar10jpg.pt --episodes 300 --warmup 100 --val-size 5000
"""

from __future__ import annotations

import argparse
import copy
import csv
import statistics
import time
from pathlib import Path

import numpy as np
import torch

import common  # noqa: E402  (bench/common.py; puts the repository on sys.path)

from agents.search import SearchConfig, run_search  # noqa: E402
from amc.engine.budget import uniform_counts  # noqa: E402
from amc.engine.measure import accuracy  # noqa: E402
from amc.policy import Policy  # noqa: E402
from amc.reward import Task, prepare_task  # noqa: E402


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--target-flops", type=float, default=0.5)
    parser.add_argument("--episodes", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--val-size", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", default=str(common.ROOT / "runs"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tag = f"{args.model}_f{round(100 * args.target_flops)}" + (f"_s{args.seed}" if args.seed else "")
    config = SearchConfig(model=args.model, checkpoint=args.checkpoint, dataset="imagefolder", data_dir=args.data_dir,
                          budget_ratio=args.target_flops, episodes=args.episodes, warmup=args.warmup,
                          val_size=args.val_size, seed=args.seed, out=str(Path(args.runs) / f"bench-{tag}"))
    task = prepare_task(config.model, config.checkpoint, config.dataset, config.data_dir, val_size=config.val_size,
                        seed=config.seed, calib_size=config.calib_size, bn_size=config.bn_size)
    resume = (Path(config.out) / "config.json").exists()
    result = run_search(config, resume=resume, progress=False, task=task)
    with open(Path(config.out) / "episodes.csv", newline="") as f:
        episode_seconds = [float(r["seconds"]) for r in csv.DictReader(f)]
    best = Policy.from_dict(result.best).counts_for(task.pruner)
    dense_val_seconds, episode_eval_seconds = paired_timing(task, best)

    rows = {}
    dense_test = task.test_accuracy(task.pruner.model)
    target = config.budget_ratio * task.pruner.cost.macs(task.pruner.channels)
    uniform = uniform_counts(task.pruner, task.pruner.cost.macs, target)
    for name, counts in (("uniform", uniform), ("amc", best)):
        pruned = task.evaluator.prune(np.asarray(counts))  # pruned and re-fitted once, measured on both splits
        rows[name] = {
            "test_accuracy": task.test_accuracy(pruned),
            "val_accuracy": accuracy(pruned, task.evaluator.val_x, task.evaluator.val_y)[0],
            "macs": int(task.pruner.cost.macs(counts)),
            "macs_ratio": float(task.pruner.cost.macs(counts) / task.pruner.cost.macs(task.pruner.channels)),
            "counts": [int(c) for c in counts],
        }
    summary = {
        "benchmark": "search",
        "model": args.model,
        "budget": {"kind": "flops", "ratio": args.target_flops},
        "command": common.command("search.py"),
        "seed": args.seed,
        "machine": common.machine(args.threads),
        "episodes": result.episodes,
        "warmup": args.warmup,
        "val_size": args.val_size,
        "dense_test_accuracy": dense_test,
        "policies": rows,
        "amc_minus_uniform_points": 100 * (rows["amc"]["test_accuracy"] - rows["uniform"]["test_accuracy"]),
        "median_episode_seconds": statistics.median(episode_seconds),
        "dense_val_forward_seconds": dense_val_seconds,
        "episode_evaluation_seconds": episode_eval_seconds,
        "search_seconds": sum(episode_seconds),
    }
    table = [
        f"# AMC search vs uniform: {args.model}, {round(100 * args.target_flops)}% FLOPs (no fine-tuning)",
        "",
        f"Command: `{summary['command']}`; seed {args.seed}; machine: {summary['machine']}.",
        f"Reward: accuracy on {args.val_size} held-out TRAIN images; {result.episodes} episodes ({args.warmup} warm-up).",
        "",
        "| policy | MACs ratio | val acc (%) | test acc (%) |",
        "|---|---|---|---|",
        f"| dense | 1.000 | - | {100 * dense_test:.2f} |",
    ]
    for name, row in rows.items():
        table.append(f"| {name} | {row['macs_ratio']:.3f} | {100 * row['val_accuracy']:.2f} | {100 * row['test_accuracy']:.2f} |")
    table += ["", f"Median episode in the search: {summary['median_episode_seconds']:.2f} s; search: "
              f"{summary['search_seconds'] / 60:.1f} min. Measured back to back after the search (medians of 3): "
              f"one episode's evaluation {episode_eval_seconds:.2f} s, one dense forward pass over the reward split "
              f"{dense_val_seconds:.2f} s (ratio {episode_eval_seconds / dense_val_seconds:.2f})."]
    common.write(f"search_{tag}", summary, table)


if __name__ == "__main__":
    main()
