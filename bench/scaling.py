"""Benchmark: set-up time, episode time and peak memory of a search against reward images and model size.

Each configuration runs in a fresh process (so its peak resident memory is its own): `SearchConfig.prepare_task`
(data, analysis, calibration statistics, re-fit targets), timed, then a short search (`--episodes`, all but the
last two of them warm-up) with the default fast reward, whose episodes are timed. Configurations: resnet56 with
1,000, 5,000 and 20,000 reward images, and resnet20, resnet56 and resnet110 with 5,000 (resnet110 has no shared
checkpoint: it runs from its seeded initialisation, which costs the same time). Writes
`bench/results/scaling.json` and `.md`.

    python bench/scaling.py --data-dir DIR --weights ../shared/weights
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common  # bench/common.py; puts the repository on sys.path
import torch

CONFIGS = (("resnet56", 1000), ("resnet56", 5000), ("resnet56", 20000), ("resnet20", 5000), ("resnet110", 5000))


def child(args) -> None:
    """One configuration, in this process: print its measurements as one JSON line."""
    import csv

    from agents.search import run_search

    model, val_size = args.child[0], int(args.child[1])
    checkpoint = common.checkpoint_path(args.weights, model)
    with tempfile.TemporaryDirectory() as tmp:
        config = common.search_config(args, model=model, checkpoint=str(checkpoint) if checkpoint.exists() else None,
                                      val_size=val_size, episodes=args.episodes, warmup=args.episodes - 2,
                                      out=str(Path(tmp) / "run"))
        started = time.perf_counter()
        task = config.prepare_task()
        setup = time.perf_counter() - started
        run_search(config, progress=False, task=task)
        log = list(csv.DictReader((Path(config.out) / "episodes.csv").read_text().splitlines()))
    seconds = [float(r["seconds"]) for r in log]
    full = [float(r["seconds"]) for r in log if int(r["val_images"]) == val_size]
    early = [float(r["seconds"]) for r in log if int(r["val_images"]) < val_size]
    print(json.dumps({"model": model, "reward_images": val_size, "groups": len(task.pruner.groups),
                      "setup_s": setup, "episode_median_s": statistics.median(seconds),
                      "full_episode_median_s": statistics.median(full) if full else None,
                      "early_episode_median_s": statistics.median(early) if early else None,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main(argv: list[str] | None = None, results: str | Path = common.RESULTS) -> None:
    parser = common.parser("scaling", __doc__)
    common.add_common_args(parser, weights="dir", threads=torch.get_num_threads())
    parser.add_argument("--episodes", type=int, default=12, help="episodes per configuration (default %(default)s)")
    parser.add_argument("--configs", default=",".join(f"{m}:{v}" for m, v in CONFIGS),
                        help="MODEL:REWARD_IMAGES,... (default: %(default)s)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)  # one configuration, in a fresh process
    args = common.parse_args(parser, argv)
    if args.child:
        return child(args)
    rows = []
    for item in args.configs.split(","):
        model, val = item.split(":")
        cmd = [sys.executable, __file__, "--child", model, val, "--weights", args.weights, "--dataset", args.dataset,
               *(["--data-dir", args.data_dir] if args.data_dir else []), "--episodes", str(args.episodes),
               "--seed", str(args.seed), "--threads", str(args.threads)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{item} failed: {done.stderr.strip().splitlines()[-1]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    report = common.summary("scaling", args, episodes=args.episodes, rows=rows)
    lines = ["# Set-up, episode time and peak memory against reward images and model size", "",
             common.header(report), f"{args.episodes} episodes per configuration, default fast reward.", "",
             "| model | groups | reward images | set-up (s) | median episode (s) | scored on all of val (s) | "
             "stopped early (s) | peak RSS (MB) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        def fmt(value):
            return "-" if value is None else f"{value:.2f}"
        lines.append(f"| {r['model']} | {r['groups']} | {r['reward_images']:,} | {r['setup_s']:.1f} | "
                     f"{fmt(r['episode_median_s'])} | {fmt(r['full_episode_median_s'])} | "
                     f"{fmt(r['early_episode_median_s'])} | {r['peak_rss_mb']:.0f} |")
    common.write("scaling", report, lines, results)


if __name__ == "__main__":
    main()
