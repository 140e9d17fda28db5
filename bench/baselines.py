"""Benchmark: the AMC agent against uniform, random search, sensitivity analysis and DP, on TEST.

Every method gets the same model, data, reward split, selection split, budget and seed; random search evaluates
exactly as many episodes as the agent, and both choose their final policy among their 8 best distinct rewards on
the selection split (`agents.selection`); the policy with the best reward is measured too ("by reward").
Every method prunes all channel groups, residual streams included, or with `--block-internal` the
block-internal groups only. Each finished (model, budget, method) is saved under
`RUNS/bench-baselines[-all]_v<reward images>_s<seed>/` and skipped when the command is run again, so the whole
grid can run in parts and resume; the AMC search runs in `RUNS/bench-<model>_f<pct>_v<reward images>_s<seed>`
(block-internal: shared with bench/search.py's run of the same settings; `_all` appended otherwise). Every policy
is evaluated on the test split after re-fit and BatchNorm re-estimation, without fine-tuning. Writes
`bench/results/baselines[_all][_s<seed>].json`, `.md` and `.png` (test accuracy vs MACs, one point per method).

    python bench/baselines.py --data-dir DIR --models resnet20,resnet56 --budgets 0.5,0.3 --val-size 1000 \
        --block-internal
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

import common  # bench/common.py; puts the repository on sys.path
import numpy as np

from agents.baselines import dp, run_baseline, sensitivity, sensitivity_table
from agents.config import SearchConfig
from agents.search import run_search
from agents.selection import FinalSelection
from amc.engine.budget import Budget
from amc.fileio import atomic_write_json
from amc.reward import Task

# "amc+": the same AMC search, its final selection also offered the dp and sensitivity policies
# (`--baseline-candidates dp,sensitivity` on a copy of the finished run folder, resumed: no episode runs again)
METHODS = ("uniform", "random", "sensitivity", "dp", "amc", "amc+")


def run_method(method: str, task: Task, model: str, checkpoint: str, ratio: float, args: argparse.Namespace) -> dict:
    """Counts, val accuracy and cost of one method; the AMC search resumes its run folder if it exists."""
    started = time.monotonic()
    budget = Budget("flops", ratio)
    if method in ("amc", "amc+"):
        config = common.in_run_folder(args.runs, common.search_config(
            args, model=model, checkpoint=checkpoint, budget_ratio=ratio, episodes=args.episodes, warmup=args.warmup))
        if not args.block_internal:  # beside the block-internal searches, never resuming one of them
            config = replace(config, out=f"{config.out}_all")
        if method == "amc+":
            searched = Path(config.out)
            config = replace(config, out=f"{config.out}_plus", baseline_candidates="dp,sensitivity")
            if not Path(config.out).exists():  # the "amc" row ran first: its finished search
                shutil.copytree(searched, config.out, ignore=shutil.ignore_patterns(".lock"))
        result = run_search(config, resume=(Path(config.out) / "config.json").exists(), progress=False, task=task)
        return {"counts": result.best.counts_for(task.pruner).tolist(),
                "val_accuracy": result.best.extra["val_accuracy"],
                "select_accuracy": result.best.extra.get("select_accuracy"),
                "evaluations": result.episodes + len(result.selection.candidates if result.selection else []),
                "seconds": result.seconds, **by_reward(result.selection)}
    if method in ("sensitivity", "dp"):  # one sensitivity table per task serves both (and amc+)
        found = (sensitivity if method == "sensitivity" else dp)(task, budget, table=sensitivity_table(task))
    else:
        found = run_baseline(method, task, budget, episodes=args.episodes, seed=args.seed)
    return {"counts": found.counts.tolist(), "val_accuracy": found.val_accuracy,
            "select_accuracy": found.select_accuracy, "evaluations": found.evaluations,
            "seconds": time.monotonic() - started, **by_reward(found.selection)}


def by_reward(selection: FinalSelection | None) -> dict:
    """The policy with the best reward of a final selection, as `by_reward` (empty without a selection)."""
    if selection is None:
        return {}
    first = selection.candidates[0]
    return {"by_reward": {"counts": first.counts, "val_accuracy": first.val_accuracy,
                          "select_accuracy": first.select_accuracy}, "chosen_rank": selection.chosen + 1}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models):
        for method in METHODS:
            points = [r for r in rows if r["model"] == model and r["method"] == method]
            ax.plot([r["macs_ratio"] for r in points], [100 * r["test_accuracy"] for r in points], "o", label=method)
        ax.set_title(f"{model} (no fine-tuning)")
        ax.set_xlabel("MACs kept (fraction of dense)")
        ax.set_ylabel("test accuracy (%)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None, results: str | Path = common.RESULTS) -> None:
    parser = common.parser("baselines", __doc__)
    common.add_common_args(parser, weights="dir", val_size=True, runs=True)
    parser.add_argument("--budgets", default="0.5,0.3")
    parser.add_argument("--methods", default=",".join(METHODS))
    common.add_search_args(parser, flops=False)
    parser.add_argument("--block-internal", action="store_true",
                        help="search only the block-internal groups (--ignore every residual stream's producers)")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: write the tables from the parts already finished")
    args = common.parse_args(parser, argv)
    common.resolve_val_size(args)
    args.command = args.command.replace(" --report-only", "")  # the tables name the command that makes the parts
    groups = "" if args.block_internal else "-all"  # the first results searched the block-internal groups only
    parts = Path(args.runs) / f"bench-baselines{groups}_v{args.val_size}_s{args.seed}"
    for model, checkpoint in common.models(args):
        task: Task | None = None
        args.ignore = common.stream_producers(model) if args.block_internal else ""
        for ratio in (float(b) for b in args.budgets.split(",")):
            for method in args.methods.split(","):
                part = parts / f"{model}_f{round(100 * ratio)}_{method}.json"
                if part.exists() or args.report_only:
                    continue
                task = task or common.task_from_args(args, model=model, checkpoint=checkpoint)
                row = {"model": model, "budget": ratio, "method": method,
                       **run_method(method, task, model, checkpoint, ratio, args)}
                counts = np.array(row["counts"])
                dense = task.pruner.cost.macs(task.pruner.channels)
                row["macs_ratio"] = float(task.pruner.cost.macs(counts) / dense)
                row["test_accuracy"] = task.test_accuracy(task.evaluator.prune(counts))
                if "by_reward" in row:
                    row["by_reward"]["test_accuracy"] = task.test_accuracy(
                        task.evaluator.prune(np.array(row["by_reward"]["counts"])))
                row["dense_test_accuracy"] = task.test_accuracy(task.pruner.model)
                atomic_write_json(part, row)
                print(json.dumps({k: v for k, v in row.items() if k != "counts"}), flush=True)
    rows = [json.loads(p.read_text()) for p in sorted(parts.glob("*.json"))]
    summary = common.summary("baselines", args, episodes=args.episodes, val_size=args.val_size, rows=rows)
    lines = [
        "# AMC vs baselines, " + ("block-internal groups" if args.block_internal else "all groups (residual streams "
        "included)") + " (test accuracy %, no fine-tuning; in brackets: accuracy % on the reward split / on the "
        "selection split)",
        "",
        f"{common.header(summary)} Reward split: {args.val_size} held-out TRAIN images; selection split: "
        f"{SearchConfig.select_size} other TRAIN images; random search and AMC evaluate {args.episodes} episodes "
        "and choose among their 8 best distinct rewards on the selection split; \"by reward\": their policy with "
        "the best reward (the choice before the selection split); amc+: the same search with the dp and sensitivity "
        "policies added to its final selection (`--baseline-candidates dp,sensitivity`).",
        "",
        "| model | FLOPs budget | dense | " + " | ".join(METHODS) + " | random by reward | amc by reward |",
        "|---|---|---|" + "---|" * (len(METHODS) + 2),
    ]

    def cell(row: dict | None) -> str:
        if row is None:
            return "-"
        select = "" if row.get("select_accuracy") is None else f" / {100 * row['select_accuracy']:.1f}"
        return f"{100 * row['test_accuracy']:.2f} ({100 * row['val_accuracy']:.1f}{select})"

    for model, ratio in sorted({(r["model"], r["budget"]) for r in rows}):
        found = {r["method"]: r for r in rows if (r["model"], r["budget"]) == (model, ratio)}
        cells = [cell(found.get(m)) for m in METHODS]
        cells += [cell(found[m].get("by_reward")) if m in found else "-" for m in ("random", "amc")]
        dense = next(iter(found.values()))["dense_test_accuracy"]
        lines.append(f"| {model} | {ratio:g} | {100 * dense:.2f} | " + " | ".join(cells) + " |")
    name = "baselines" + groups.replace("-", "_") + (f"_s{args.seed}" if args.seed else "")
    common.write(name, summary, lines, results)
    plot(rows, Path(results) / f"{name}.png")


if __name__ == "__main__":
    main()
