"""The `amc` command line: `amc eval | profile | baseline | apply ...`.

A subcommand is one function `(args) -> exit code` registered with `@command(...)`, which names the
shared flags it takes (each defined once in `_SHARED_FLAGS`, so every command spells and documents them
the same way) and, optionally, a function adding its own flags. Errors the user can fix (`AmcError`)
print one line `amc: error: ...` and exit 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from amc import __version__
from amc import distributed
from amc.augment import normalize
from amc.budget import Budget, check_reachable, cost_function, uniform_counts
from amc.data import Dataset, default_val_size, load_dataset, split_train_val
from amc.errors import AmcError
from amc.evaluate import accuracy, cpu_latencies, cpu_latency
from amc.flops import count_macs_params
from amc.policy import Policy
from amc.pruned_model import load_model, read_model_info, save_pruned
from amc.pruner import SELECTIONS, ChannelPruner
from amc.export import export_onnx, export_torchscript
from amc.finetune import FinetuneConfig, finetune
from amc.latency import LatencyTable
from amc.task import TrainedModel, load_trained_model, prepare_task
from amc.zoo import digits_checkpoint
from agents.ddpg import ALGORITHMS
from agents.search import SearchConfig, run_search
from envs.channel_pruning import REWARDS

CommandFn = Callable[[argparse.Namespace], int]
AddArguments = Callable[[argparse.ArgumentParser], None]
AddShared = Callable[[argparse.ArgumentParser, bool], None]

# ----------------------------------------------------------------------------------------------------
# Shared flags and command registration


def _input_shape(text: str) -> tuple[int, int, int]:
    parts = text.split(",")
    if len(parts) != 3 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r} is not C,H,W (three positive integers, e.g. 3,32,32)")
    c, h, w = (int(p) for p in parts)
    return c, h, w


def _flag(*names: str, **kwargs: Any) -> AddShared:
    def add(parser: argparse.ArgumentParser, required: bool) -> None:
        parser.add_argument(*names, required=required, **kwargs)

    return add


def _budget_flags(parser: argparse.ArgumentParser, required: bool) -> None:
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("--target-flops", type=float, metavar="R", help="keep at most R of the dense MACs, R in (0, 1]")
    group.add_argument("--target-params", type=float, metavar="R", help="keep at most R of the dense parameters")
    group.add_argument("--target-latency", type=float, metavar="R",
                       help="keep at most R of the dense CPU latency (a per-layer table is measured once)")
    parser.add_argument("--latency-batch", type=int, default=1, metavar="N",
                        help="batch size the latency table is measured at (default 1)")
    parser.add_argument("--latency-channels-last", action="store_true",
                        help="measure the latency table in channels-last memory layout (see amc eval --channels-last)")


_SHARED_FLAGS: dict[str, AddShared] = {
    "model": _flag(
        "--model", metavar="MODEL", help="registered name (e.g. resnet56), pkg.mod:factory, file.py:factory, "
        "or (eval, profile) an amc pruned-model file NAME.pt",
    ),
    "checkpoint": _flag("--checkpoint", metavar="FILE", help="trained weights of the dense model (torch file)"),
    "dataset": _flag("--dataset", metavar="NAME", help="digits, cifar10, cifar100, imagefolder or synthetic"),
    "data_dir": _flag("--data-dir", metavar="DIR", help="folder holding the dataset's files"),
    "input_shape": _flag(
        "--input-shape", type=_input_shape, default=(3, 32, 32), metavar="C,H,W",
        help="one input's shape, used when no --dataset is given (default 3,32,32)",
    ),
    "seed": _flag("--seed", type=int, default=0, help="seed of the train/val split and calibration sample (default 0)"),
    "val_size": _flag(
        "--val-size", type=int, metavar="N",
        help="TRAIN images held out as the val split (default: a fifth, at most 5000)",
    ),
    "selection": _flag(
        "--selection", choices=SELECTIONS,
        help="how a group's kept channels are chosen: ls (default: greedy least squares on the calibration "
        "images, the channels the re-fit replaces best), or by weight norm: l1, l2, bn (BatchNorm scale)",
    ),
    "out": _flag("--out", metavar="FILE", help="file to write"),
    "force": _flag("--force", action="store_true", help="overwrite --out if it exists"),
    "budget": _budget_flags,
    "json": _flag("--json", action="store_true", help="print the result as one JSON object"),
    "debug": _flag("--debug", action="store_true", help="show the traceback of an error"),
}
_EVERY_COMMAND = ("json", "debug")


@dataclass(frozen=True)
class _Command:
    run: CommandFn
    help: str
    shared: tuple[str, ...]
    required: tuple[str, ...]
    arguments: AddArguments | None


_COMMANDS: dict[str, _Command] = {}


def command(
    name: str,
    help: str,
    *,
    shared: Sequence[str],
    required: Sequence[str] = ("model",),
    arguments: AddArguments | None = None,
) -> Callable[[CommandFn], CommandFn]:
    """Register the decorated function as `amc NAME`.

    `shared` names the flags of `_SHARED_FLAGS` it takes (--json and --debug always), `required` those
    of them that must be given, and `arguments` adds the command's own flags to its parser.
    """

    def register(run: CommandFn) -> CommandFn:
        wrong = (set(shared) | set(required)) - set(_SHARED_FLAGS) or set(required) - set(shared)
        if wrong:
            raise ValueError(f"command {name}: shared flags {sorted(wrong)} are unknown or not in `shared`")
        _COMMANDS[name] = _Command(run, help, tuple(shared), tuple(required), arguments)
        return run

    return register


def build_parser() -> argparse.ArgumentParser:
    """The `amc` argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(prog="amc", description="AMC: channel pruning of trained CNNs under a budget.")
    parser.add_argument("--version", action="version", version=f"amc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, cmd in _COMMANDS.items():
        shared = argparse.ArgumentParser(add_help=False)
        for flag in (*cmd.shared, *_EVERY_COMMAND):
            _SHARED_FLAGS[flag](shared, flag in cmd.required)
        child = sub.add_parser(name, parents=[shared], help=cmd.help, description=cmd.help)
        if cmd.arguments is not None:
            cmd.arguments(child)
        child.set_defaults(run=cmd.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `amc` with `argv` (default: the process's arguments); returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse's own errors (exit 2), --help and --version (exit 0)
        return exc.code if isinstance(exc.code, int) else 2
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            return args.run(args)
        except AmcError as exc:
            if args.debug:
                raise
            print(f"amc: error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as exc:
            print(f"amc: interrupted{'; ' + str(exc) if str(exc) else ''}", file=sys.stderr)
            return 130
        except Exception as exc:
            if args.debug:
                raise
            text = " ".join(str(exc).split())
            print(f"amc: internal error: {type(exc).__name__}: {text}; rerun with --debug for the traceback",
                  file=sys.stderr)
            return 1


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    # One line per warning, like errors: where in amc it was raised does not help the user.
    print(f"amc: warning: {message}", file=sys.stderr)


# ----------------------------------------------------------------------------------------------------
# Helpers shared by commands


def _is_model_file(spec: str) -> bool:
    """True when --model names an amc pruned-model file rather than a dense model."""
    return spec.endswith(".pt")


def _dataset(args: argparse.Namespace) -> Dataset | None:
    return load_dataset(args.dataset, args.data_dir) if args.dataset else None


def _trained_model(args: argparse.Namespace, data: Dataset | None) -> TrainedModel:
    """The model --model (and --checkpoint) name, with its input shape and normalization.

    --model may be an amc pruned-model file, which carries its own weights, shape and normalization.
    """
    if not _is_model_file(args.model):
        # Commands that require --dataset have no --input-shape flag.
        shape = data.image_shape if data is not None else args.input_shape
        trained = load_trained_model(args.model, args.checkpoint, dataset=data, input_shape=shape)
        _check_forward(trained.module, trained.input_shape, args.model)
        return trained
    if args.checkpoint:
        raise AmcError(f"{args.model} is a pruned-model file with its own weights; drop --checkpoint")
    info = read_model_info(args.model)
    shape = tuple(info["input_shape"])
    if data is not None and tuple(data.image_shape) != shape:
        raise AmcError(
            f"{args.model} takes inputs of shape {shape} but dataset {data.name} has {tuple(data.image_shape)}; "
            "pass the dataset the model was pruned on"
        )
    return TrainedModel(load_model(args.model), args.model, info["num_classes"], shape, tuple(info["mean"]),
                        tuple(info["std"]))


def _apply_selection(args: argparse.Namespace, policy: Policy | None) -> str:
    """The channel selection apply uses: --selection, else the one the policy (or the agent's run) was
    searched with, else ls; without --dataset (no calibration images) a weight norm, l1 by default."""
    if args.agent is not None:
        config = Path(args.agent).parent / "config.json"
        recorded = json.loads(config.read_text()).get("selection") if config.is_file() else None
    else:
        recorded = policy.extra.get("selection") if policy is not None else None
    if args.dataset:
        return args.selection or recorded or "ls"
    if args.selection == "ls":
        raise AmcError("--selection ls chooses channels on calibration images: pass --dataset (and --data-dir)")
    if args.selection:
        return args.selection
    if recorded == "ls":
        warnings.warn("the policy was searched with least-squares channel selection, which needs --dataset; "
                      "keeping channels by l1 magnitude instead")
        return "l1"
    return recorded or "l1"


def _check_forward(model: nn.Module, input_shape: Sequence[int], spec: str) -> None:
    """AmcError when the model cannot take inputs of `input_shape` (e.g. a CIFAR model on 8x8 digits)."""
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_shape))
    except Exception as exc:
        raise AmcError(
            f"model {spec} fails on inputs of shape {tuple(input_shape)} ({type(exc).__name__}); "
            "pass the dataset or --input-shape it was built for"
        ) from exc


def _budget(args: argparse.Namespace) -> Budget:
    if args.latency_batch < 1:
        raise AmcError(f"--latency-batch {args.latency_batch} is not a batch size; pass e.g. --latency-batch 64")
    if args.target_flops is not None:
        return Budget("flops", args.target_flops)
    if args.target_latency is not None:
        return Budget("latency", args.target_latency)
    return Budget("params", args.target_params)


def _has_budget(args: argparse.Namespace) -> bool:
    return any(v is not None for v in (args.target_flops, args.target_params, args.target_latency))


def _check_out(args: argparse.Namespace) -> None:
    """Refuse to overwrite --out without --force; called before any work is done."""
    if Path(args.out).exists() and not args.force:
        raise AmcError(f"{args.out} already exists; pass --force to overwrite it or choose another --out")


def _print_json(obj: dict[str, Any]) -> None:
    print(json.dumps(obj, indent=2))


def _print_rows(rows: list[tuple[str, str]]) -> None:
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


# ----------------------------------------------------------------------------------------------------
# amc eval


def _eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--split", choices=("test", "val"), default="test",
                        help="test split, or val: the seeded held-out part of TRAIN (--val-size, --seed)")
    parser.add_argument("--compare", nargs=2, metavar=("DENSE", "PRUNED"),
                        help="compare two models (--checkpoint belongs to DENSE): accuracy, MACs, params, "
                             "CPU latency at batch 1 and 64, speed-up")
    parser.add_argument("--channels-last", action="store_true",
                        help="time the models in channels-last memory layout, usually the faster one on a CPU")


@command(
    "eval", "accuracy, MACs, parameters and CPU latency of a model (dense, or an amc pruned-model file)",
    shared=("model", "checkpoint", "dataset", "data_dir", "seed", "val_size"),
    required=("dataset",),
    arguments=_eval_arguments,
)
def run_eval(args: argparse.Namespace) -> int:
    if args.compare:
        return _compare(args)
    if not args.model:
        raise AmcError("eval needs --model MODEL (or --compare DENSE PRUNED)")
    data = load_dataset(args.dataset, args.data_dir)
    trained = _trained_model(args, data)
    if args.split == "test":
        images, labels = data.test.images, data.test.labels
    else:
        n_train = len(data.train)
        val_size = default_val_size(n_train) if args.val_size is None else args.val_size
        _, val_idx = split_train_val(n_train, val_size, args.seed)
        images, labels = data.train.images[val_idx], data.train.labels[val_idx]
    acc, _ = accuracy(trained.module, normalize(images, trained.mean, trained.std), labels)
    macs, params = count_macs_params(trained.module, trained.input_shape)
    latency = cpu_latency(trained.module, trained.input_shape, channels_last=args.channels_last)
    threads = torch.get_num_threads()
    layout = "channels-last" if args.channels_last else "contiguous"
    if args.json:
        _print_json({"model": args.model, "split": args.split, "accuracy": acc, "images": len(labels), "macs": macs,
                     "params": params, "latency_ms": latency, "threads": threads, "layout": layout})
        return 0
    _print_rows([
        ("model", args.model),
        ("split", f"{args.split} ({len(labels)} images)"),
        ("accuracy", f"{100 * acc:.2f}%"),
        ("MACs", f"{macs:,}"),
        ("params", f"{params:,}"),
        ("latency", f"{latency:.3f} ms (batch 1, {threads} CPU threads, {layout} layout)"),
    ])
    return 0


def _compare(args: argparse.Namespace) -> int:
    """One table for a dense and a pruned model on the test split, latency as medians of repeated runs."""
    data = load_dataset(args.dataset, args.data_dir)
    threads = torch.get_num_threads()
    layout = "channels-last" if args.channels_last else "contiguous"
    models, rows = [], []
    for spec, checkpoint in zip(args.compare, (args.checkpoint, None)):
        trained = _trained_model(argparse.Namespace(model=spec, checkpoint=checkpoint, input_shape=None), data)
        acc, _ = accuracy(trained.module, normalize(data.test.images, trained.mean, trained.std), data.test.labels)
        macs, params = count_macs_params(trained.module, trained.input_shape)
        models.append(trained.module)
        rows.append({"model": spec, "test_accuracy": acc, "macs": macs, "params": params})
    for b in (1, 64):  # both models in each round of timing, so the machine's load hits them alike
        for row, ms in zip(rows, cpu_latencies(models, trained.input_shape, b, channels_last=args.channels_last)):
            row[f"latency_ms_batch{b}"] = ms
    dense, pruned = rows
    speedup = {b: dense[f"latency_ms_batch{b}"] / pruned[f"latency_ms_batch{b}"] for b in (1, 64)}
    if args.json:
        _print_json({"models": rows, "speedup_batch1": speedup[1], "speedup_batch64": speedup[64], "threads": threads,
                     "layout": layout})
        return 0
    print(f"{'model':<28}{'test acc':>9}{'MACs':>14}{'params':>11}{'ms @1':>9}{'ms @64':>9}")
    for r in rows:
        print(f"{Path(r['model']).name:<28}{100 * r['test_accuracy']:>8.2f}%{r['macs']:>14,}{r['params']:>11,}"
              f"{r['latency_ms_batch1']:>9.2f}{r['latency_ms_batch64']:>9.1f}")
    print(f"speed-up: {speedup[1]:.2f}x at batch 1, {speedup[64]:.2f}x at batch 64 "
          f"(median CPU latency, {threads} threads, {layout} layout); MACs {dense['macs'] / pruned['macs']:.2f}x fewer")
    return 0


# ----------------------------------------------------------------------------------------------------
# amc profile


@command(
    "profile", "the prunable channel groups of a model and their share of its MACs (needs only shapes)",
    shared=("model", "checkpoint", "dataset", "data_dir", "input_shape"),
)
def run_profile(args: argparse.Namespace) -> int:
    trained = _trained_model(args, _dataset(args))
    pruner = ChannelPruner(trained.module, trained.input_shape)
    macs, params = count_macs_params(trained.module, trained.input_shape)
    groups = [
        {"name": g.name, "channels": g.channels, "macs": int(share), "min_keep": g.min_keep, "consumer": g.consumer}
        for g, share in zip(pruner.groups, pruner.cost.group_macs())
    ]
    if args.json:
        _print_json({"model": args.model, "macs": macs, "params": params, "groups": groups})
        return 0
    width = max([len("group"), *(len(g["name"]) for g in groups)])
    print(f"{'group':<{width}}  {'channels':>8}  {'MACs %':>7}  {'min_keep':>8}  refit consumer")
    for g in groups:
        print(f"{g['name']:<{width}}  {g['channels']:>8}  {100 * g['macs'] / macs:>7.2f}  {g['min_keep']:>8}  "
              f"{g['consumer'] or '-'}")
    print(f"\n{len(groups)} groups; dense model: {macs:,} MACs, {params:,} params, input {trained.input_shape}")
    print("MACs %: share of the dense MACs in the layers a group's channels come from or feed "
          "(a layer between two groups counts for both)")
    return 0


# ----------------------------------------------------------------------------------------------------
# amc baseline

def _baseline_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", choices=("uniform", "random", "sensitivity", "dp"), default="uniform",
                        help="uniform (needs only shapes), or random / sensitivity / dp (need --dataset: they evaluate)")
    parser.add_argument("--lbound", type=float, help="fewest channels a group keeps, as a fraction of its "
                        "channels (default 0 for uniform, 0.2 otherwise, as the agent)")
    parser.add_argument("--episodes", type=int, default=SearchConfig().episodes,
                        help="random search: evaluated episodes, as the agent's --episodes (default 400)")


@command(
    "baseline", "write a baseline pruning policy that meets a budget",
    shared=("model", "checkpoint", "dataset", "data_dir", "input_shape", "out", "force", "budget", "seed", "val_size",
            "selection"),
    required=("model", "out", "budget"),
    arguments=_baseline_arguments,
)
def run_baseline(args: argparse.Namespace) -> int:
    _check_out(args)
    budget = _budget(args)
    lbound = args.lbound if args.lbound is not None else (0.0 if args.method == "uniform" else SearchConfig().lbound)
    if not 0.0 <= lbound < 1.0:
        raise AmcError(f"--lbound {lbound} is outside [0, 1); pass e.g. --lbound 0.2")
    extra: dict[str, Any] = {}
    if args.method == "uniform" and (not args.dataset or budget.kind == "latency"):
        trained = _trained_model(args, _dataset(args))
        pruner = ChannelPruner(trained.module, trained.input_shape, selection=args.selection or "ls")
        table = (LatencyTable.measure(pruner, batch_size=args.latency_batch, channels_last=args.latency_channels_last)
                 if budget.kind == "latency" else None)
        cost = cost_function(pruner, budget.kind, table)
        counts = uniform_counts(pruner, cost, check_reachable(pruner, cost, budget, lbound))
    elif not args.dataset:
        raise AmcError(f"baseline --method {args.method} evaluates policies: pass --dataset (and --data-dir)")
    else:
        from agents.baselines import run_baseline as search_baseline  # the CLI is where amc meets its agents

        task = prepare_task(args.model, args.checkpoint, args.dataset, args.data_dir, val_size=args.val_size,
                            seed=args.seed, selection=args.selection or "ls")
        pruner = task.pruner
        found = search_baseline(args.method, task, budget, episodes=args.episodes, seed=args.seed, lbound=lbound)
        counts = found.counts
        extra = {"val_accuracy": found.val_accuracy, "evaluations": found.evaluations, "seed": args.seed}
    policy = Policy.from_counts(pruner, args.model, counts, budget, method=args.method, lbound=lbound, **extra)
    policy.save(args.out)
    p = policy.predicted
    if args.json:
        _print_json({"out": args.out, "method": args.method, **p, **extra})
    else:
        print(f"wrote {args.out}: {args.method} policy, MACs {p['macs']:,} ({100 * p['macs_ratio']:.2f}% of dense), "
              f"params {p['params']:,} ({100 * p['params_ratio']:.2f}% of dense)"
              + (f", val accuracy {100 * extra['val_accuracy']:.2f}%" if extra else ""))
    return 0


# ----------------------------------------------------------------------------------------------------
# amc apply


def _apply_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--policy", metavar="FILE", help="policy JSON (from amc baseline or a search)")
    source.add_argument("--agent", metavar="FILE",
                        help="a trained agent (runs/NAME/agent.zip): its actor picks the policy for the budget given")
    parser.add_argument("--no-reconstruct", action="store_true",
                        help="skip the least-squares re-fit of the layers that consume pruned channels")
    _finetune_arguments(parser, epochs=0)


@command(
    "apply", "prune a model with a policy and write the pruned-model file",
    shared=("model", "checkpoint", "dataset", "data_dir", "input_shape", "out", "force", "seed", "val_size", "budget",
            "selection"),
    required=("model", "out"),
    arguments=_apply_arguments,
)
def run_apply(args: argparse.Namespace) -> int:
    if not (args.finetune_epochs and args.resume):  # resuming a fine-tuning continues its --out
        _check_out(args)
    if args.agent is not None and not (args.dataset and _has_budget(args)):
        raise AmcError("apply --agent needs --dataset (for the reward) and a budget, e.g. --target-flops 0.5")
    if args.finetune_epochs and not args.dataset:
        raise AmcError("--finetune-epochs needs --dataset (and --data-dir) to train on")
    if _is_model_file(args.model):
        raise AmcError(f"apply prunes a dense model; {args.model} is a pruned-model file: pass its base model")
    reconstruct = not args.no_reconstruct
    if not args.dataset and reconstruct:
        raise AmcError("apply without --dataset has no calibration images for the re-fit; "
                       "pass --dataset (and --data-dir), or --no-reconstruct")
    policy = Policy.load(args.policy) if args.policy else None
    if policy is not None and policy.model != args.model:
        warnings.warn(f"policy {args.policy} was made for model {policy.model}; applying it to {args.model}")

    selection = _apply_selection(args, policy)
    task = None
    if args.dataset:
        task = prepare_task(args.model, args.checkpoint, args.dataset, args.data_dir, val_size=args.val_size,
                            seed=args.seed, reconstruct="sequential" if reconstruct else "none", selection=selection)
        trained, pruner = task.model, task.pruner
    else:
        trained = load_trained_model(args.model, args.checkpoint, input_shape=args.input_shape)
        _check_forward(trained.module, trained.input_shape, args.model)
        pruner = ChannelPruner(trained.module, trained.input_shape, selection=selection)
    if policy is None:
        from agents.search import policy_from_agent  # the CLI is where amc meets its agents

        budget = _budget(args)
        counts, found = policy_from_agent(args.agent, task, budget)
        policy = Policy.from_counts(pruner, args.model, counts, budget, method="amc-agent", agent=args.agent,
                                    val_accuracy=found["accuracy"])
    counts = policy.counts_for(pruner)
    keep = pruner.keep_indices(dict(zip(pruner.names, counts.tolist())))
    if task is not None:
        # Exactly as a search evaluates a policy: the same channels, re-fit, then BatchNorm re-estimation.
        pruned = task.evaluator.prune(counts)
    else:
        pruned = pruner.prune(keep, reconstruct=False)
    kept = {name: idx.tolist() for name, idx in keep.items()}

    def save(model: nn.Module, path: str | Path) -> dict[str, Any]:
        return save_pruned(path, model, base=args.model, num_classes=trained.num_classes,
                           input_shape=trained.input_shape, mean=trained.mean, std=trained.std, kept=kept,
                           policy=policy.to_dict())

    if args.finetune_epochs:
        _finetune(args, pruned, task.dataset, trained, save, teacher=task.pruner.model)
        pruned = load_model(args.out)
    else:
        save(pruned, args.out)
    test_accuracy = None if task is None else task.test_accuracy(pruned)
    info = read_model_info(args.out)
    _export(args, pruned, trained.input_shape)
    dense_macs, dense_params = int(pruner.cost.macs(pruner.channels)), int(pruner.cost.params(pruner.channels))
    macs_ratio, params_ratio = info["macs"] / dense_macs, info["params"] / dense_params
    if args.json:
        _print_json({"out": args.out, "model": args.model, "test_accuracy": test_accuracy, "macs": info["macs"],
                     "macs_ratio": macs_ratio, "params": info["params"], "params_ratio": params_ratio,
                     "reconstruct": reconstruct})
        return 0
    _print_rows([
        ("wrote", args.out),
        ("test accuracy", "not measured (no --dataset)" if test_accuracy is None else f"{100 * test_accuracy:.2f}%"),
        ("MACs", f"{info['macs']:,} ({100 * macs_ratio:.2f}% of dense {dense_macs:,})"),
        ("params", f"{info['params']:,} ({100 * params_ratio:.2f}% of dense {dense_params:,})"),
    ])
    return 0


# ----------------------------------------------------------------------------------------------------
# Fine-tuning and export (amc apply --finetune-epochs, amc finetune)


def _finetune_arguments(parser: argparse.ArgumentParser, epochs: int) -> None:
    defaults = FinetuneConfig()
    flag = "--epochs" if epochs else "--finetune-epochs"
    parser.add_argument(flag, dest="finetune_epochs", type=int, default=epochs or 0,
                        help=f"epochs of fine-tuning (default {epochs or 'none'})")
    parser.add_argument("--lr", type=float, default=defaults.lr, help=f"peak SGD learning rate for batch 128 (default {defaults.lr})")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="images per step (default 128)")
    parser.add_argument("--weight-decay", type=float, default=defaults.weight_decay, help="default 5e-4")
    parser.add_argument("--label-smoothing", type=float, default=defaults.label_smoothing, help="default 0")
    parser.add_argument("--distill-alpha", type=float, default=defaults.distill_alpha,
                        help="weight of distillation from the dense model (default 0: none)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--device", default=defaults.device, help="cpu or cuda (default cpu)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted fine-tuning of --out")
    parser.add_argument("--export", choices=("torchscript", "onnx"), action="append", default=[],
                        help="also write OUT.torchscript.pt (runs with plain torch) or OUT.onnx; repeatable")


def _finetune(args: argparse.Namespace, model: nn.Module, data: Dataset, trained: TrainedModel,
              save: Callable[[nn.Module, str | Path], Any], teacher: nn.Module | None) -> None:
    """Fine-tune `model` on the TRAIN split less `val`, keeping the best epoch on `val` in --out."""
    n_train = len(data.train)
    val_size = default_val_size(n_train) if args.val_size is None else args.val_size
    train_idx, val_idx = split_train_val(n_train, val_size, args.seed)
    config = FinetuneConfig(epochs=args.finetune_epochs, batch_size=args.batch_size, lr=args.lr,
                            weight_decay=args.weight_decay, label_smoothing=args.label_smoothing,
                            distill_alpha=args.distill_alpha, seed=args.seed, num_threads=args.threads,
                            device=args.device)
    model = model.to(memory_format=torch.contiguous_format)
    try:
        result = finetune(model, data.train.subset(train_idx), data.train.subset(val_idx), trained.mean, trained.std,
                          config, teacher=teacher if args.distill_alpha > 0 else None, out=args.out,
                          resume=args.resume, save_fn=save)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"every finished epoch is kept beside {args.out}: continue with the same "
                                "arguments plus --resume") from None
    if distributed.is_main():
        print(f"fine-tuned {config.epochs} epochs: best val accuracy {100 * result.best_val_acc:.2f}% "
              f"(epoch {result.best_epoch}), written to {args.out}", file=sys.stderr)


def _export(args: argparse.Namespace, model: nn.Module, input_shape: Sequence[int]) -> None:
    for kind in args.export:
        if kind == "torchscript":
            path = Path(args.out).with_suffix(".torchscript.pt")
            export_torchscript(model, input_shape, path)
        else:
            path = Path(args.out).with_suffix(".onnx")
            export_onnx(model, input_shape, path)
        print(f"exported {kind}: {path}", file=sys.stderr)


def _finetune_command_arguments(parser: argparse.ArgumentParser) -> None:
    _finetune_arguments(parser, epochs=30)
    parser.add_argument("--teacher", metavar="MODEL", help="dense model to distill from (with --distill-alpha)")
    parser.add_argument("--teacher-checkpoint", metavar="FILE", help="the teacher's weights")


@command(
    "finetune", "fine-tune a pruned-model file (SGD, Nesterov, cosine); runs under torchrun for DDP",
    shared=("model", "dataset", "data_dir", "out", "force", "seed", "val_size"),
    required=("model", "dataset", "out"),
    arguments=_finetune_command_arguments,
)
def run_finetune(args: argparse.Namespace) -> int:
    if not _is_model_file(args.model):
        raise AmcError(f"finetune takes an amc pruned-model file (from amc apply); {args.model} is not a .pt file")
    if not args.resume:
        _check_out(args)
    data = load_dataset(args.dataset, args.data_dir)
    args.checkpoint = None
    trained = _trained_model(args, data)
    info = read_model_info(args.model)
    teacher = None
    if args.teacher:
        teacher = load_trained_model(args.teacher, args.teacher_checkpoint, dataset=data).module
    elif args.distill_alpha > 0:
        raise AmcError("--distill-alpha needs --teacher MODEL (and --teacher-checkpoint FILE): the dense model")

    def save(model: nn.Module, path: str | Path) -> dict[str, Any]:
        return save_pruned(path, model, base=info["base"], num_classes=info["num_classes"],
                           input_shape=info["input_shape"], mean=info["mean"], std=info["std"], kept=info["kept"],
                           policy=info["policy"])

    _finetune(args, trained.module, data, trained, save, teacher)
    if not distributed.is_main():  # under torchrun, rank 0 alone measures, exports and reports
        return 0
    best = load_model(args.out)
    acc, _ = accuracy(best, normalize(data.test.images, trained.mean, trained.std), data.test.labels)
    _export(args, best, trained.input_shape)
    if args.json:
        _print_json({"out": args.out, "test_accuracy": acc, "epochs": args.finetune_epochs})
    else:
        print(f"wrote {args.out}: test accuracy {100 * acc:.2f}%")
    return 0


# ----------------------------------------------------------------------------------------------------
# amc train-agent


def _train_agent_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = SearchConfig()
    parser.add_argument("--reward", choices=REWARDS, default=defaults.reward,
                        help="acc, flops (-error*log MACs), params (-error*log params) or latency "
                             "(-error*log microseconds) (default acc)")
    parser.add_argument("--episodes", type=int, default=defaults.episodes, help="episodes in all (default 400)")
    parser.add_argument("--warmup", type=int, default=defaults.warmup,
                        help="first episodes with uniformly random actions (default 100)")
    parser.add_argument("--algo", choices=sorted(ALGORITHMS), default=defaults.algo, help="SB3 algorithm (default ddpg)")
    parser.add_argument("--lbound", type=float, default=defaults.lbound, help="smallest preserve ratio (default 0.2)")
    parser.add_argument("--rbound", type=float, default=defaults.rbound, help="largest preserve ratio (default 1.0)")
    parser.add_argument("--device", default=defaults.device, help="device of the agent's networks (default cpu)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


@command(
    "train-agent", "search a pruning policy with the AMC agent (no arguments: the embedded digits model at 50%% FLOPs)",
    shared=("model", "checkpoint", "dataset", "data_dir", "out", "force", "seed", "val_size", "budget", "selection"),
    required=(),
    arguments=_train_agent_arguments,
)
def run_train_agent(args: argparse.Namespace) -> int:
    budget = _budget(args) if _has_budget(args) else Budget("flops", 0.5)
    model = args.model or "digits_cnn"
    dataset = args.dataset or ("digits" if model == "digits_cnn" else None)
    if dataset is None:
        raise AmcError("train-agent needs --dataset (and --data-dir) for the reward; e.g. --dataset cifar10 --data-dir DIR")
    checkpoint = args.checkpoint
    if checkpoint is None and model == "digits_cnn" and dataset == "digits":
        checkpoint = str(digits_checkpoint())
    if checkpoint is None:
        warnings.warn(f"no --checkpoint: searching the untrained model {model}")
    out = args.out or str(Path("runs") / f"{Path(model).stem}-{budget.kind}{round(100 * budget.ratio)}")
    config = SearchConfig(
        model=model, checkpoint=checkpoint, dataset=dataset, data_dir=args.data_dir, budget_kind=budget.kind,
        budget_ratio=budget.ratio, reward=args.reward, latency_batch=args.latency_batch,
        latency_channels_last=args.latency_channels_last, episodes=args.episodes, warmup=args.warmup,
        val_size=args.val_size, seed=args.seed, algo=args.algo, lbound=args.lbound, rbound=args.rbound,
        selection=args.selection or SearchConfig.selection, device=args.device, out=out,
    )
    try:
        result = run_search(config, resume=args.resume, force=args.force, progress=not args.no_progress)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"every finished episode is kept in {out}: continue with the same arguments "
                                "plus --resume") from None
    best, uniform = result.best, result.uniform
    if args.json:
        _print_json({"run": str(result.run_dir), "episodes": result.episodes, "seconds": result.seconds,
                     "best": best, "uniform": uniform})
        return 0
    print(f"run folder: {result.run_dir} ({result.episodes} episodes, {result.seconds / 60:.1f} min)")
    print(f"{'group':<24}{'channels':>9}{'amc':>6}{'uniform':>9}")
    for mine, flat in zip(best["groups"], uniform["groups"]):
        print(f"{mine['name']:<24}{mine['channels']:>9}{mine['keep']:>6}{flat['keep']:>9}")
    for name, policy in (("amc", best), ("uniform", uniform)):
        p = policy["predicted"]
        print(f"{name:<8} val accuracy {100 * policy['val_accuracy']:.2f}%  MACs {100 * p['macs_ratio']:.2f}%  "
              f"params {100 * p['params_ratio']:.2f}% of dense")
    print(f"best policy: {result.run_dir / 'best_policy.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
