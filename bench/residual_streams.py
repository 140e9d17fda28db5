"""Benchmark: pruning a CIFAR ResNet's residual streams, for accuracy (no fine-tuning) and CPU speed.

Two sets of channel groups are searched at the same FLOPs budget, with the baselines benchmark's settings
(`--val-size` reward images, 300 episodes, the final selection): `internal`, the block-internal groups only
(`--ignore` of every residual stream's producers), and `all`, those plus one group per stage's residual stream.
For each set, the AMC policy and the uniform one (the same preserve ratio for every group of the set) are
measured: test accuracy through the fast evaluation (channel selection, re-fit, BatchNorm re-estimation), MACs,
and CPU latency as deployed (BatchNorm folded; batch 1 and 64, contiguous and channels-last; latency does not
depend on the weights, so it is timed on untrained copies pruned to the same widths, all in interleaved rounds).
Each finished policy is kept under RUNS, so a stopped run resumes. Writes
`bench/results/residual_streams_<model>_f<pct>[_s<seed>].json` and `.md`.

    python bench/residual_streams.py --model resnet56 --checkpoint ../shared/weights/resnet56-cifar10jpg.pt \
        --data-dir DIR --val-size 1000 --threads 1 --runs /tmp/runs
"""

from __future__ import annotations

import json
from pathlib import Path

import common  # bench/common.py; puts the repository on sys.path
import numpy as np
import torch

from agents.search import run_search
from amc.engine.budget import Budget, check_reachable, cost_function, uniform_counts
from amc.engine.cost import count_macs_params
from amc.engine.pruner import ChannelPruner
from amc.fileio import atomic_write_json
from amc.models import create_model

SETS = ("internal", "all")


def main(argv: list[str] | None = None, results: str | Path = common.RESULTS) -> None:
    parser = common.parser("residual_streams", __doc__)
    common.add_common_args(parser, weights="checkpoint", val_size=True, runs=True)
    common.add_search_args(parser)
    parser.add_argument("--sets", default=",".join(SETS), help="group sets to search (default %(default)s)")
    args = common.parse_args(parser, argv)
    common.resolve_val_size(args)
    tag = common.search_tag(args.model, args.target_flops, args.seed, args.channel_round)
    parts = Path(args.runs) / f"bench-residual_streams_{tag}_v{args.val_size}"
    dense = create_model(args.model).eval()
    streams = common.stream_producers(args.model)
    budget = Budget("flops", args.target_flops)
    rows = []
    for name in args.sets.split(","):
        ignore = streams if name == "internal" else ""
        part = parts / f"{name}.json"
        if not part.exists():
            config = common.search_config(args, budget_ratio=args.target_flops, episodes=args.episodes,
                                          warmup=args.warmup, ignore=ignore, out=str(parts / f"search-{name}"))
            task = config.prepare_task()
            result = run_search(config, resume=(Path(config.out) / "config.json").exists(), progress=False, task=task)
            cost = cost_function(task.pruner, "flops")
            policies = {"uniform": uniform_counts(task.pruner, cost, check_reachable(task.pruner, cost, budget)),
                        "amc": result.best.counts_for(task.pruner)}
            measured = {}
            for method, counts in policies.items():
                pruned = task.evaluator.prune(counts)
                measured[method] = {
                    "groups": task.pruner.names, "counts": [int(c) for c in counts],
                    "test_accuracy": task.test_accuracy(pruned), "val_accuracy": task.evaluator(counts).accuracy,
                    "macs_ratio": float(cost(counts) / cost(task.pruner.channels))}
            part.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(part, {"set": name, "ignore": ignore, "groups": len(task.pruner.groups),
                                     "dense_test_accuracy": task.test_accuracy(task.pruner.model),
                                     "search_seconds": result.seconds, "policies": measured})
        rows.append(json.loads(part.read_text()))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "policies"}), flush=True)

    # latency: untrained copies pruned to each policy's widths, timed together
    models, labels = [dense], ["dense"]
    for row in rows:
        pruner = ChannelPruner(create_model(args.model).eval(), (3, 32, 32), selection="l1",
                               ignored=[n for n in row["ignore"].split(",") if n])
        for method, policy in row["policies"].items():
            assert pruner.names == policy["groups"]
            models.append(pruner.prune(pruner.kept_indices(np.array(policy["counts"])), reconstruct=False))
            labels.append(f"{method} ({row['set']})")
    dense_macs = count_macs_params(dense, (3, 32, 32))[0]
    timed = common.latencies(models, (3, 32, 32))
    table = [{"model": label, "macs_ratio": count_macs_params(m, (3, 32, 32))[0] / dense_macs, **t}
             for label, m, t in zip(labels, models, timed)]
    summary = common.summary(f"residual_streams_{tag}", args, model=args.model, budget=args.target_flops,
                             episodes=args.episodes, val_size=args.val_size, streams=streams, sets=rows,
                             latency=table)
    accuracy = {f"{method} ({row['set']})": policy for row in rows for method, policy in row["policies"].items()}
    lines = [
        f"# {args.model} at {round(100 * args.target_flops)}% FLOPs: block-internal groups only (internal) against "
        "those plus the residual streams (all)",
        "",
        f"{common.header(summary)} Reward split: {args.val_size} held-out TRAIN images; AMC: {args.episodes} "
        f"episodes and the final selection. `internal` ignores the stream producers `{streams}`. Test accuracy "
        f"without fine-tuning (dense {100 * rows[0]['dense_test_accuracy']:.2f}%); latency as deployed (BatchNorm "
        "folded), median of interleaved rounds, contiguous / channels-last."
        + (f" Channel rounding: every group keeps a multiple of {args.channel_round} channels, or all of them."
           if args.channel_round > 1 else ""),
        "",
        "| policy | groups | test % | reward split % | MACs | ms @1 | ms @64 | speed-up @1 | speed-up @64 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    groups = {f"{m} ({row['set']})": row["groups"] for row in rows for m in row["policies"]}
    for r in table:
        acc = accuracy.get(r["model"])
        cells = (f"{groups[r['model']]} | {100 * acc['test_accuracy']:.2f} | {100 * acc['val_accuracy']:.2f}"
                 if acc else f"- | {100 * rows[0]['dense_test_accuracy']:.2f} | -")
        lines.append(f"| {r['model']} | {cells} | {r['macs_ratio']:.3f} | " + common.latency_cells(r))
    common.write(f"residual_streams_{tag}", summary, lines, results)


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
