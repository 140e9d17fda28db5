"""`amc baseline`: a policy from a simple rule (uniform, random search, sensitivity, DP), in the policy schema."""

from __future__ import annotations

import argparse
from typing import Any

from agents.config import SearchConfig
from amc.cli import COUNT, LBOUND, command
from amc.cli.train_agent import select_size_flag


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", choices=("uniform", "random", "sensitivity", "dp"), default="uniform",
                        help="uniform (needs only shapes), or random / sensitivity / dp (need --dataset: they "
                             "evaluate; FLOPs or params budgets only) (default %(default)s)")
    parser.add_argument("--lbound", type=LBOUND, help="fewest channels a group keeps, as a fraction of its "
                        f"channels (default 0 for uniform, {SearchConfig.lbound} otherwise, as the agent)")
    parser.add_argument("--episodes", type=COUNT, default=SearchConfig.episodes,
                        help="random search: evaluated episodes, as the agent's --episodes (default %(default)s)")
    select_size_flag(parser)


@command(
    "baseline", "write a baseline pruning policy that meets a budget",
    shared=("device", "model", "checkpoint", "dataset", "data_dir", "input_shape", "out", "force",
            "budget", "seed", "val_size", "reward_data", "selection", "ignore",
            "channel_round"),
    required=("model", "out", "budget"),
    arguments=_arguments,
)
def run(args: argparse.Namespace) -> int:
    from agents.search import measure_latency_table  # the CLI is where amc meets its agents
    from amc.cli import common
    from amc.engine.budget import check_reachable, cost_function, uniform_counts
    from amc.engine.groups import layer_names
    from amc.engine.pruner import ChannelPruner
    from amc.errors import AmcError
    from amc.policy import Policy

    common.check_out(args.out, args.force)
    budget = common.budget(args.target_flops, args.target_params, args.target_latency)
    if budget.kind == "latency" and args.method != "uniform":
        raise AmcError(f"baseline --method {args.method} takes a --target-flops or --target-params budget; with "
                       "--target-latency use --method uniform, or search with amc train-agent --target-latency")
    lbound = args.lbound if args.lbound is not None else (0.0 if args.method == "uniform" else SearchConfig.lbound)
    if not 0.0 <= lbound < 1.0:
        raise AmcError(f"--lbound {lbound} is outside [0, 1); pass e.g. --lbound 0.2")
    extra: dict[str, Any] = {}
    if args.method == "uniform" and (not args.dataset or budget.kind == "latency"):
        data = common.dataset(args.dataset, args.data_dir, args.image_size)
        trained = common.trained_model(args.model, args.checkpoint, data, args.input_shape)
        # without data no channels are chosen by least squares: record the weight norm apply will use
        pruner = ChannelPruner(trained.module, trained.input_shape,
                               selection=args.selection or ("ls" if args.dataset else "l1"),
                               ignored=layer_names(args.ignore), channel_round=args.channel_round)
        table = (measure_latency_table(pruner, args.latency_batch, args.latency_channels_last)
                 if budget.kind == "latency" else None)
        cost = cost_function(pruner, budget.kind, table)
        counts = uniform_counts(pruner, cost, check_reachable(pruner, cost, budget, lbound))
        if table is not None:  # the table's estimate: `amc eval --compare` times the pruned model for real
            extra["latency_predicted"] = float(table(counts) / table.dense)
        policy = Policy.from_counts(pruner, args.model, counts, budget, method=args.method, lbound=lbound, **extra)
    elif not args.dataset:
        raise AmcError(f"baseline --method {args.method} evaluates policies: pass --dataset (and --data-dir)")
    else:
        from agents.baselines import run_baseline  # the CLI is where amc meets its agents
        from amc.reward import prepare_task

        common.warn_if_untrained(args.model, args.checkpoint, "scoring policies on")
        task = prepare_task(args.model, args.checkpoint, args.dataset, args.data_dir, image_size=args.image_size,
                            val_size=args.val_size, seed=args.seed, selection=args.selection or "ls",
                            select_size=args.select_size, reward_data=args.reward_data, ignore=args.ignore,
                            channel_round=args.channel_round, device=args.device)
        found = run_baseline(args.method, task, budget, episodes=args.episodes, seed=args.seed, lbound=lbound)
        extra = {"val_accuracy": found.val_accuracy, "evaluations": found.evaluations, "seed": args.seed}
        if found.select_accuracy is not None:
            extra["select_accuracy"] = found.select_accuracy
        policy = found.to_policy(task, budget, lbound=lbound, seed=args.seed)
    policy.save(args.out)
    p = policy.predicted
    if args.json:
        common.print_json({"out": args.out, "method": args.method, **p, **extra})
    else:
        print(f"wrote {args.out}: {args.method} policy, MACs {p['macs']:,} ({100 * p['macs_ratio']:.2f}% of dense), "
              f"params {p['params']:,} ({100 * p['params_ratio']:.2f}% of dense)"
              + (f", latency {100 * extra['latency_predicted']:.1f}% (table)" if "latency_predicted" in extra else "")
              + (f", val accuracy {100 * extra['val_accuracy']:.2f}%" if "val_accuracy" in extra else "")
              + (f", selection split {100 * extra['select_accuracy']:.2f}%" if "select_accuracy" in extra else ""))
    return 0
