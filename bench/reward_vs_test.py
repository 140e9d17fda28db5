"""Benchmark: does TEST accuracy follow the search's reward among the best policies?

Rebuilds the task of a finished FLOPs-budget search (its `config.json`: model, data, seed, reward split,
calibration images) and measures on TEST, with the search's own fast evaluation (no fine-tuning):
- the `--top` distinct policies of `episodes.csv` with the highest reward, `--sample` random others, and the
  uniform policy: Spearman rank correlation of reward and test accuracy over all of them
  and over the top ones alone;
- a greedy local search on the reward from the best policy: `--local-steps` moves, each taking one or two
  channels from one group and giving another group as many as the budget allows, kept when the reward-split
  accuracy rises; the test accuracy of every kept move.
Writes `bench/results/reward_vs_test_<run folder>.json` and `.md`.

    python bench/reward_vs_test.py --run RUNS/bench-resnet56_f50 --top 8 --sample 8 --local-steps 50
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch

import common  # noqa: E402  (bench/common.py; puts the repository on sys.path)

from agents.search import SearchConfig  # noqa: E402
from amc.engine.budget import min_counts, ratio_counts, uniform_counts  # noqa: E402
from amc.engine.measure import accuracy  # noqa: E402
from amc.reward import Task, prepare_task  # noqa: E402


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman rank correlation of two equally long sequences (ties ranked by position)."""
    ranks = [np.argsort(np.argsort(np.asarray(x))) for x in (a, b)]
    return float(np.corrcoef(ranks[0], ranks[1])[0, 1])


def val_and_test(task: Task, counts: np.ndarray) -> tuple[float, float]:
    """Reward-split and test accuracy in [0, 1] of kept counts [G], pruned and re-fitted once."""
    model = task.evaluator.prune(counts)
    return accuracy(model, task.evaluator.val_x, task.evaluator.val_y)[0], task.test_accuracy(model)


def local_search(task: Task, start: np.ndarray, target: float, steps: int, seed: int) -> list[dict]:
    """Greedy channel moves from `start` [G] kept when the reward-split accuracy rises; one row per kept
    move (and the start): step, val and test accuracy in [0, 1], kept counts."""
    pruner = task.pruner
    rng, floor = np.random.default_rng(seed), min_counts(pruner)
    counts = start.copy()
    best, test = val_and_test(task, start)
    rows = [{"step": 0, "val_accuracy": best, "test_accuracy": test, "counts": start.tolist()}]
    for step in range(1, steps + 1):
        giver, taker = rng.choice(len(counts), 2, replace=False)
        moved = counts.copy()
        moved[giver] = max(floor[giver], moved[giver] - int(rng.integers(1, 3)))
        while moved[taker] < pruner.channels[taker]:
            moved[taker] += 1
            if pruner.cost.macs(moved) > target:
                moved[taker] -= 1
                break
        if moved[taker] == counts[taker]:
            continue
        model = task.evaluator.prune(moved)
        val = accuracy(model, task.evaluator.val_x, task.evaluator.val_y)[0]
        if val > best:
            counts, best, test = moved, val, task.test_accuracy(model)
            rows.append({"step": step, "val_accuracy": val, "test_accuracy": test, "counts": moved.tolist()})
            print(f"step {step}: val {100 * val:.2f}% test {100 * test:.2f}%", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="run folder of a finished search with a FLOPs budget")
    parser.add_argument("--data-dir", help="the data folder, if it moved since the search")
    parser.add_argument("--top", type=int, default=8)
    parser.add_argument("--sample", type=int, default=8)
    parser.add_argument("--local-steps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run = Path(args.run)
    config = SearchConfig(**json.loads((run / "config.json").read_text()))
    if config.budget_kind != "flops" or config.reward != "acc":
        raise SystemExit("this benchmark takes a search with a FLOPs budget and the acc reward")
    task = prepare_task(config.model, config.checkpoint, config.dataset, args.data_dir or config.data_dir,
                        val_size=config.val_size, seed=config.seed, calib_size=config.calib_size,
                        bn_size=config.bn_size, selection=config.selection)
    pruner, reward_images = task.pruner, len(task.evaluator.val_y)
    with open(run / "episodes.csv", newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: -float(r["reward"]))
    episodes, seen = [], set()
    for row in rows:  # one row per distinct policy: its earliest episode with its best reward
        ratios = tuple(row[f"ratio:{n}"] for n in pruner.names)
        if ratios not in seen:
            seen.add(ratios)
            episodes.append(row)
    rng = np.random.default_rng(config.seed)
    rest = episodes[args.top:]
    chosen = episodes[: args.top] + [rest[i] for i in sorted(rng.choice(len(rest), args.sample, replace=False))]
    target = config.budget_ratio * pruner.cost.macs(pruner.channels)
    uniform = uniform_counts(pruner, pruner.cost.macs, target)

    policies = []
    for rank, row in enumerate(chosen):
        counts = ratio_counts(pruner, np.array([float(row[f"ratio:{n}"]) for n in pruner.names]))
        started = time.monotonic()
        test = task.test_accuracy(task.evaluator.prune(counts))
        policies.append({"episode": int(row["episode"]), "top": rank < args.top, "reward": float(row["reward"]),
                         "val_accuracy": float(row["val_accuracy"]), "test_accuracy": test, "counts": counts.tolist()})
        print(f"episode {row['episode']}: val {100 * float(row['val_accuracy']):.2f}% test {100 * test:.2f}% "
              f"({time.monotonic() - started:.0f} s)", flush=True)
    uniform_val, uniform_test = val_and_test(task, uniform)
    best_counts = np.array(policies[0]["counts"])
    local = local_search(task, best_counts, target, args.local_steps, config.seed)

    top = [p for p in policies if p["top"]]
    summary = {
        "benchmark": "reward_vs_test",
        "run": run.name,
        "model": config.model,
        "search": {"episodes": config.episodes, "warmup": config.warmup, "reward_images": reward_images, "seed": config.seed},
        "command": common.command("reward_vs_test.py"),
        "machine": common.machine(args.threads),
        "uniform": {"val_accuracy": uniform_val, "test_accuracy": uniform_test, "counts": uniform.tolist()},
        "policies": policies,
        "spearman_all": spearman([p["val_accuracy"] for p in policies] + [uniform_val],
                                 [p["test_accuracy"] for p in policies] + [uniform_test]),
        "spearman_top": spearman([p["val_accuracy"] for p in top], [p["test_accuracy"] for p in top]),
        "local_search": {"steps": args.local_steps, "kept": local},
    }
    tests = [100 * p["test_accuracy"] for p in policies]
    table = [
        f"# Reward against test accuracy: {run.name} ({config.model}, {round(100 * config.budget_ratio)}% FLOPs, "
        "no fine-tuning)",
        "",
        f"Command: `{summary['command']}`; search seed {config.seed}, {reward_images} reward images; "
        f"machine: {summary['machine']}.",
        "",
        "| policies | n | Spearman (reward-split acc, test acc) | test acc range (%) |",
        "|---|---|---|---|",
        f"| top {args.top} by reward + {args.sample} random + uniform | {len(policies) + 1} | "
        f"{summary['spearman_all']:.2f} | {min(tests + [100 * uniform_test]):.2f} - {max(tests):.2f} |",
        f"| top {args.top} by reward | {len(top)} | {summary['spearman_top']:.2f} | "
        f"{min(tests[: len(top)]):.2f} - {max(tests[: len(top)]):.2f} |",
        "",
        f"Uniform: reward split {100 * uniform_val:.2f}%, test {100 * uniform_test:.2f}%. Best reward (episode "
        f"{policies[0]['episode']}): reward split {100 * policies[0]['val_accuracy']:.2f}%, test {tests[0]:.2f}%.",
        "",
        f"Greedy local search from the best policy ({args.local_steps} moves, {len(local) - 1} kept):",
        "",
        "| step | reward-split acc (%) | test acc (%) |",
        "|---|---|---|",
    ] + [f"| {r['step']} | {100 * r['val_accuracy']:.2f} | {100 * r['test_accuracy']:.2f} |" for r in local]
    common.write(f"reward_vs_test_{run.name}", summary, table)


if __name__ == "__main__":
    main()
