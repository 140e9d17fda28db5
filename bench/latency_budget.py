"""Benchmark: does a `--target-latency R` search meet its budget when the pruned model is timed again?

Runs the AMC search with a latency budget (`--target-latency R` at `--batch`, channels-last if
`--channels-last`: the run's per-layer latency table, `amc.engine.latency`; the search then times its final policy
and narrows it if it runs slower than the budget, `fit_to_latency`), then times again, in one new measurement, the
dense model and four policies: the search's final one; the policy the table alone chose (the final selection's
choice, before the timed check); the uniform policy the table puts at the budget; and that uniform policy after
the same timed check. Each measured latency ratio (as deployed: BatchNorm folded, in interleaved rounds,
`amc.engine.measure.latencies`) is compared with the table's prediction. Writes
`bench/results/latency_budget_<model>_l<pct>[_s<seed>].json` and `.md`.

    python bench/latency_budget.py --model resnet56 --checkpoint ../shared/weights/resnet56-cifar10jpg.pt \
        --data-dir DIR --val-size 1000 --target-latency 0.5 --batch 64 --channels-last --threads 1
"""

from __future__ import annotations

import json
from pathlib import Path

import common  # bench/common.py; puts the repository on sys.path
import numpy as np

from agents.search import latency_table, run_search
from amc.engine.budget import uniform_counts
from amc.engine.cost import count_macs_params
from amc.engine.latency import fit_to_latency
from amc.engine.measure import latencies


def main(argv: list[str] | None = None, results: str | Path = common.RESULTS) -> None:
    parser = common.parser("latency_budget", __doc__)
    common.add_common_args(parser, weights="checkpoint", val_size=True, runs=True)
    parser.add_argument("--target-latency", type=float, default=0.5)
    parser.add_argument("--batch", type=int, default=64, help="batch size the budget holds at (default 64)")
    parser.add_argument("--channels-last", action="store_true", help="time in channels-last memory layout")
    common.add_search_args(parser, flops=False)
    args = common.parse_args(parser, argv)
    common.resolve_val_size(args)
    tag = (f"{args.model}_l{round(100 * args.target_latency)}" + (f"_s{args.seed}" if args.seed else "")
           + (f"_r{args.channel_round}" if args.channel_round > 1 else ""))
    config = common.search_config(args, budget_kind="latency", budget_ratio=args.target_latency,
                                  latency_batch=args.batch, latency_channels_last=args.channels_last,
                                  episodes=args.episodes, warmup=args.warmup,
                                  out=str(Path(args.runs) / f"bench-latency_budget_{tag}_v{args.val_size}"))
    task = config.prepare_task()
    result = run_search(config, resume=(Path(config.out) / "config.json").exists(), progress=False, task=task)
    table = latency_table(task, Path(config.out), args.batch, args.channels_last)
    flat = uniform_counts(task.pruner, table, args.target_latency * table.dense)
    policies = {"amc": result.best.counts_for(task.pruner)}
    if result.selection is not None:
        policies["amc, table only"] = np.array(result.selection.best.counts)
    policies["uniform, table only"] = flat
    policies["uniform"] = fit_to_latency(task.pruner, table, flat, args.target_latency).keep
    models = [task.pruner.model] + [task.evaluator.prune(counts) for counts in policies.values()]
    shape = task.pruner.input_shape
    measured = latencies(models, shape, args.batch, channels_last=args.channels_last)
    dense_macs = count_macs_params(task.pruner.model, shape)[0]
    rows = []
    for (name, counts), model, ms in zip(policies.items(), models[1:], measured[1:]):
        rows.append({"policy": name, "counts": [int(c) for c in counts],
                     "predicted_ratio": float(table(counts) / table.dense), "measured_ratio": ms / measured[0],
                     "measured_ms": ms, "macs_ratio": count_macs_params(model, shape)[0] / dense_macs,
                     "test_accuracy": task.test_accuracy(model)})
    summary = common.summary(f"latency_budget_{tag}", args, model=args.model, budget=args.target_latency,
                             batch=args.batch, channels_last=args.channels_last, dense_ms=measured[0],
                             table_dense_ms=table.dense, episodes=args.episodes, rows=rows)
    layout = "channels-last" if args.channels_last else "contiguous"
    lines = [f"# {args.model}: a latency budget of {args.target_latency:g} at batch {args.batch} ({layout}), "
             "re-measured", "", common.header(summary) + f" Dense: {measured[0]:.1f} ms measured, {table.dense:.1f} ms "
             "when the table was made. Test accuracy without fine-tuning.", "",
             "| policy | predicted latency | measured latency | MACs | test % |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['policy']} | {r['predicted_ratio']:.3f} | {r['measured_ratio']:.3f} | "
                     f"{r['macs_ratio']:.3f} | {100 * r['test_accuracy']:.2f} |")
    common.write(f"latency_budget_{tag}", summary, lines, results)
    print(json.dumps({r["policy"]: round(r["measured_ratio"], 3) for r in rows}))


if __name__ == "__main__":
    main()
