"""Benchmark: the default `amc train-agent` as a user runs it, timed end to end, and its policy on TEST.

Runs `amc train-agent --model M --checkpoint C --dataset D --data-dir DIR --target-flops R --seed S --out RUN` in a
subprocess with every other setting at its default (one process, torch's default threads), and measures its
wall-clock time (set-up included) and peak resident memory. Then the best policy and the uniform one are applied
through the same fast evaluation (selection, re-fit, BatchNorm re-estimation; no fine-tuning) and measured on the
test split. Writes `bench/results/search_time_<model>_f<pct>[_s<seed>].json` and `.md`.

    python bench/search_time.py --model resnet56 --checkpoint ../shared/weights/resnet56-cifar10jpg.pt \
        --data-dir DIR --seed 0 --runs /tmp/runs
"""

from __future__ import annotations

import csv
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import common  # bench/common.py; puts the repository on sys.path
import torch

from agents.config import SearchConfig
from amc.policy import Policy


def main(argv: list[str] | None = None, results: str | Path = common.RESULTS) -> None:
    parser = common.parser("search_time", __doc__)
    common.add_common_args(parser, weights="checkpoint", runs=True, threads=torch.get_num_threads())
    parser.add_argument("--target-flops", type=float, default=0.5)
    parser.add_argument("--extra", default="", help="further train-agent flags, e.g. '--race-images 0'")
    args = common.parse_args(parser, argv)
    tag = common.search_tag(args.model, args.target_flops, args.seed)
    out = Path(args.runs) / f"search_time-{tag}"
    argv_cli = [sys.executable, "-m", "amc.cli", "train-agent", "--model", args.model, "--checkpoint",
                args.checkpoint, "--dataset", args.dataset, *(["--data-dir", args.data_dir] if args.data_dir else []),
                "--target-flops",
                str(args.target_flops), "--seed", str(args.seed), "--out", str(out), "--no-progress", "--force",
                *args.extra.split()]
    if out.exists():
        shutil.rmtree(out)
    started = time.perf_counter()
    done = subprocess.run(argv_cli, cwd=common.ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"train-agent failed ({done.returncode}): {done.stderr.strip().splitlines()[-1]}")
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    log = list(csv.DictReader((out / "episodes.csv").read_text().splitlines()))
    config = SearchConfig.read(out)
    task = config.prepare_task()
    n = len(task.evaluator.val_y)
    rows = {}
    best = Policy.load(out / "best_policy.json")
    from amc.engine.budget import uniform_counts
    from envs.channel_pruning import ChannelPruningEnv

    env = ChannelPruningEnv(task.pruner, task.evaluator, config.budget(), lbound=config.lbound, rbound=config.rbound)
    for name, counts in (("uniform", uniform_counts(task.pruner, env.cost, env.target)),
                         ("amc", best.counts_for(task.pruner))):
        pruned = task.evaluator.prune(counts)
        rows[name] = {"test_accuracy": task.test_accuracy(pruned), "val_accuracy": task.evaluator(counts).accuracy,
                      "macs_ratio": float(task.pruner.cost.macs(counts) / task.pruner.cost.macs(task.pruner.channels)),
                      "counts": [int(c) for c in counts]}
    seconds = [float(r["seconds"]) for r in log]
    full = [float(r["seconds"]) for r in log if int(r["val_images"]) == n]
    early = [float(r["seconds"]) for r in log if int(r["val_images"]) < n]
    # the command as the results show it: the checkpoint relative to the repository, not this machine's path
    shown = [os.path.relpath(a, common.ROOT) if a == args.checkpoint else a for a in argv_cli[3:]]
    report = common.summary(f"search_time_{tag}", args, model=args.model, command_line="amc " + " ".join(shown),
                            config=json.loads((out / "config.json").read_text()), wall_seconds=wall,
                            episode_seconds_total=sum(seconds), setup_and_rest_seconds=wall - sum(seconds),
                            median_episode_seconds=statistics.median(seconds), full_evaluations=len(full),
                            median_full_episode_seconds=statistics.median(full) if full else None,
                            median_early_episode_seconds=statistics.median(early) if early else None,
                            peak_rss_mb=peak_mb, reward_images=n, policies=rows)
    lines = [f"# The default search, timed as a user runs it: {args.model} at {round(100 * args.target_flops)}% FLOPs",
             "", common.header(report), f"`amc {' '.join(shown)}` (every other setting at its default).", "",
             "| wall clock (min) | episodes | scored on all {n} val images | median episode (s) | peak RSS (MB) | "
             "uniform test (%) | amc test (%) | amc val (%) |".replace("{n}", str(n)),
             "|---|---|---|---|---|---|---|---|",
             f"| {wall / 60:.1f} | {len(log)} | {len(full)} | {statistics.median(seconds):.2f} | {peak_mb:.0f} | "
             f"{100 * rows['uniform']['test_accuracy']:.2f} | {100 * rows['amc']['test_accuracy']:.2f} | "
             f"{100 * rows['amc']['val_accuracy']:.2f} |"]
    common.write(f"search_time_{tag}", report, lines, results)


if __name__ == "__main__":
    main()
