"""`amc apply`: prune a model with a policy (or a trained agent at a budget), optionally fine-tune, and write
one pruned-model file."""

from __future__ import annotations

import argparse

from amc.cli import command
from amc.cli.finetune import finetune_and_save, finetune_arguments, finetune_config


def _arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--policy", metavar="FILE", help="policy JSON (from amc baseline or a search)")
    source.add_argument("--agent", metavar="FILE",
                        help="a trained agent (runs/NAME/agent.zip): its actor picks the policy for the budget given")
    parser.add_argument("--no-reconstruct", action="store_true",
                        help="skip the least-squares re-fit of the layers that consume pruned channels")
    finetune_arguments(parser, epochs=0)


@command(
    "apply", "prune a model with a policy and write the pruned-model file",
    shared=("device", "model", "checkpoint", "dataset", "data_dir", "input_shape", "out", "force",
            "seed", "val_size", "budget", "selection"),
    required=("model", "out"),
    arguments=_arguments,
)
def run(args: argparse.Namespace) -> int:
    from amc.cli import common

    with common.output_lock(args.out):
        return _apply(args)


def _apply(args: argparse.Namespace) -> int:
    import warnings
    from pathlib import Path

    from amc.apply import apply_policy, choose_selection
    from amc.cli import common
    from amc.engine.pruner import ChannelPruner
    from amc.errors import AmcError
    from amc.models.pruned import load_model, read_model_info
    from amc.models.trained import load_trained_model
    from amc.policy import Policy
    from amc.reward import prepare_task

    if not args.finetune_epochs:  # fine-tuning checks (and with --force removes) its own outputs
        common.check_out(args.out, args.force)
    budget = common.budget(args.target_flops, args.target_params, args.target_latency)
    if args.agent is not None and not (args.dataset and budget):
        raise AmcError("apply --agent needs --dataset (for the reward) and a budget, e.g. --target-flops 0.5")
    if args.finetune_epochs and not args.dataset:
        raise AmcError("--finetune-epochs needs --dataset (and --data-dir) to train on")
    if common.is_model_file(args.model):
        raise AmcError(f"apply prunes a dense model; {args.model} is a pruned-model file: pass its base model")
    reconstruct = not args.no_reconstruct
    if not args.dataset and reconstruct:
        raise AmcError("apply without --dataset has no calibration images for the re-fit; "
                       "pass --dataset (and --data-dir), or --no-reconstruct")
    policy = Policy.load(args.policy) if args.policy else None
    if policy is not None and policy.model != args.model:
        warnings.warn(f"policy {args.policy} was made for model {policy.model}; applying it to {args.model}")

    if args.agent is not None:
        from agents.config import SearchConfig  # the CLI is where amc meets its agents

        run_config = SearchConfig.read(Path(args.agent).parent)
        recorded = run_config.selection if run_config else None
    else:
        recorded = policy.extra.get("selection")
    selection = choose_selection(args.selection, recorded, has_data=bool(args.dataset))
    common.warn_if_untrained(args.model, args.checkpoint, "pruning")
    task = None
    if args.dataset:
        task = prepare_task(args.model, args.checkpoint, args.dataset, args.data_dir, image_size=args.image_size,
                            val_size=args.val_size, seed=args.seed, selection=selection, device=args.device,
                            reconstruct="sequential" if reconstruct else "none")
        trained, pruner = task.model, task.pruner
    else:
        trained = load_trained_model(args.model, args.checkpoint, input_shape=args.input_shape or common.DEFAULT_INPUT_SHAPE)
        pruner = ChannelPruner(trained.module, trained.input_shape, selection=selection)
    if policy is None:
        from agents.search import policy_from_agent

        counts, found = policy_from_agent(args.agent, task, budget)
        policy = Policy.from_counts(pruner, args.model, counts, budget, method="amc-agent", agent=args.agent,
                                    val_accuracy=found["accuracy"])
    pruned = apply_policy(task if task is not None else (trained, pruner), policy)
    if args.finetune_epochs:
        finetune_and_save(pruned, task.dataset, finetune_config(args), args.out, val_size=args.val_size,
                          resume=args.resume, force=args.force, teacher=task.pruner.model)
        pruned = pruned.with_module(load_model(args.out))
        info = read_model_info(args.out)
    else:
        info = pruned.save(args.out)
    test_accuracy = None if task is None else task.test_accuracy(pruned.module)
    common.export_all(pruned.module, trained.input_shape, args.out, args.export)
    dense_macs, dense_params = int(pruner.cost.macs(pruner.channels)), int(pruner.cost.params(pruner.channels))
    macs_ratio, params_ratio = info["macs"] / dense_macs, info["params"] / dense_params
    if args.json:
        common.print_json({"out": args.out, "model": args.model, "test_accuracy": test_accuracy, "macs": info["macs"],
                           "macs_ratio": macs_ratio, "params": info["params"], "params_ratio": params_ratio,
                           "reconstruct": reconstruct})
        return 0
    common.print_rows([
        ("wrote", args.out),
        ("test accuracy", "not measured (no --dataset)" if test_accuracy is None else f"{100 * test_accuracy:.2f}%"),
        ("MACs", f"{info['macs']:,} ({100 * macs_ratio:.2f}% of dense {dense_macs:,})"),
        ("params", f"{info['params']:,} ({100 * params_ratio:.2f}% of dense {dense_params:,})"),
    ])
    return 0
