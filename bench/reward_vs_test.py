"""Benchmark: does TEST accuracy follow the search's reward among the best policies?

Rebuilds the task of a finished FLOPs-budget search (its `config.json`: model, data, seed, reward split,
calibration images) and measures on TEST, with the search's own fast evaluation (no fine-tuning):
- the `--top` distinct policies of `episodes.csv` with the highest reward, `--sample` random others, and the
  uniform policy: Spearman rank correlation of reward-split accuracy (on all of it, float32) and test accuracy
  over all of them and over the top ones alone;
- a greedy local search on the reward from the best policy: `--local-steps` moves, each taking one or two
  channels from one group and giving another group as many as the budget allows, kept when the reward-split
  accuracy rises; the test accuracy of every kept move.
Writes `bench/results/reward_vs_test_<run folder>.json` and `.md` (for a run folder of bench/search.py or
bench/baselines.py, `bench-<model>_f<pct>_v<reward images>_s<seed>`, the name of that search's results:
`reward_vs_test_bench-<model>_f<pct>[_s<seed>]`).

    python bench/reward_vs_test.py --run RUNS/bench-resnet56_f50_v5000_s0 --top 8 --sample 8 --local-steps 50
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import common  # bench/common.py; puts the repository on sys.path
import numpy as np

from agents.config import SearchConfig
from agents.runfolder import EpisodeLog
from amc.engine.budget import min_counts, ratio_counts, uniform_counts
from amc.engine.measure import accuracy
from amc.engine.pruner import ChannelPruner
from amc.reward import Task


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


def result_name(run: Path, config: SearchConfig) -> str:
    """`reward_vs_test_<run folder name>`; a benchmark's run folder (`common.run_folder`) is named as its
    search's results, `bench-<model>_f<pct>[_s<seed>]`, which keeps the names of the committed results."""
    bench = config.val_size is not None and run.name == common.run_folder(run.parent, config).name
    return "reward_vs_test_" + (f"bench-{common.search_tag(config.model, config.budget_ratio, config.seed)}"
                                if bench else run.name)


def policy_counts(log: EpisodeLog, pruner: ChannelPruner, row: dict[str, str]) -> np.ndarray:
    """The kept channel counts [G] an `episodes.csv` row logged."""
    if f"keep:{pruner.names[0]}" in row:
        return log.unit_counts(row, [g.sections for g in pruner.groups])
    # Run folders of the amc before `keep:` columns (commit 7caf9d7) logged each group's kept fraction with
    # 4 decimals (`ratio:NAME`) instead; fraction x channels rounds back to the exact count.
    return ratio_counts(pruner, np.array([float(row[f"ratio:{n}"]) for n in pruner.names]))


def main(argv: list[str] | None = None, results: str | Path = common.RESULTS) -> None:
    parser = common.parser("reward_vs_test", __doc__)
    parser.add_argument("--run", required=True, help="run folder of a finished search with a FLOPs budget")
    parser.add_argument("--data-dir", help="the data folder, if it moved since the search")
    parser.add_argument("--top", type=int, default=8)
    parser.add_argument("--sample", type=int, default=8)
    parser.add_argument("--local-steps", type=int, default=50)
    common.add_common_args(parser, data=False, seed=False)
    args = common.parse_args(parser, argv)
    run = Path(args.run)
    config = SearchConfig.from_dict(json.loads((run / "config.json").read_text()))  # older runs' bn_size too
    if config.budget_kind != "flops" or config.reward != "acc":
        raise SystemExit("this benchmark takes a search with a FLOPs budget and the acc reward")
    task = dataclasses.replace(config, data_dir=args.data_dir or config.data_dir).prepare_task()
    pruner, reward_images = task.pruner, len(task.evaluator.val_y)
    log = EpisodeLog(run / "episodes.csv", pruner.names)
    episodes, seen = [], set()  # one per distinct policy: its earliest episode with its best reward
    for row in sorted(log.read(), key=lambda r: -float(r["reward"])):
        counts = policy_counts(log, pruner, row)
        if tuple(counts) not in seen:
            seen.add(tuple(counts))
            episodes.append((row, counts))
    rng = np.random.default_rng(config.seed)
    rest = episodes[args.top:]
    chosen = episodes[: args.top] + [rest[i] for i in sorted(rng.choice(len(rest), args.sample, replace=False))]
    target = config.budget_ratio * pruner.cost.macs(pruner.channels)
    uniform = uniform_counts(pruner, pruner.cost.macs, target)

    policies = []
    for rank, (row, counts) in enumerate(chosen):
        started = time.monotonic()
        # on all of the reward split, in float32: a raced policy's log row holds its accuracy on the first images
        val, test = val_and_test(task, counts)
        policies.append({"episode": int(row["episode"]), "top": rank < args.top, "reward": float(row["reward"]),
                         "val_accuracy": val, "test_accuracy": test, "counts": counts.tolist()})
        print(f"episode {row['episode']}: val {100 * val:.2f}% test {100 * test:.2f}% "
              f"({time.monotonic() - started:.0f} s)", flush=True)
    uniform_val, uniform_test = val_and_test(task, uniform)
    best_counts = np.array(policies[0]["counts"])
    local = local_search(task, best_counts, target, args.local_steps, config.seed)

    top = [p for p in policies if p["top"]]
    summary = common.summary(
        "reward_vs_test", args,
        seed=config.seed,
        run=run.name,
        model=config.model,
        search={"episodes": config.episodes, "warmup": config.warmup, "reward_images": reward_images,
                "seed": config.seed},
        uniform={"val_accuracy": uniform_val, "test_accuracy": uniform_test, "counts": uniform.tolist()},
        policies=policies,
        spearman_all=spearman([p["val_accuracy"] for p in policies] + [uniform_val],
                              [p["test_accuracy"] for p in policies] + [uniform_test]),
        spearman_top=spearman([p["val_accuracy"] for p in top], [p["test_accuracy"] for p in top]),
        local_search={"steps": args.local_steps, "kept": local},
    )
    tests = [100 * p["test_accuracy"] for p in policies]
    table = [
        f"# Reward against test accuracy: {run.name} ({config.model}, {round(100 * config.budget_ratio)}% FLOPs, "
        "no fine-tuning)",
        "",
        f"{common.header(summary)} Seed and reward split ({reward_images} held-out TRAIN images) are the search's.",
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
    common.write(result_name(run, config), summary, table, results)


if __name__ == "__main__":
    main()
