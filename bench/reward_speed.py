"""Benchmark: what each lever of the fast reward buys, alone, in time and in agreement with the full evaluation.

Takes policies from a finished search's `episodes.csv` (`--run`, every episode's kept channel counts; `--policies`
of them, spread over the search, in search order) and scores each with the reward evaluation in several set-ups on
the same task: the float32, unfolded, all-of-val evaluation (`RewardEvaluator.prune` + `score`, amc's reward
before these levers) and each lever alone (one CPU thread instead of torch's default; BatchNorm folded into the
convs; bfloat16 forward passes; racing on the first 1,000 val images), then all of them together (the default).
Reports the median seconds per policy and the largest difference in val accuracy from the float32 evaluation;
for racing, how many policies went on to all of val and the mean error of the early estimates. Writes
`bench/results/reward_speed_<model>.json` and `.md`.

    python bench/reward_speed.py --model resnet56 --checkpoint ../shared/weights/resnet56-cifar10jpg.pt \
        --data-dir DIR --run runs/resnet56-flops50 --policies 12
"""

from __future__ import annotations

import csv
import statistics
import time
from pathlib import Path

import common  # bench/common.py; puts the repository on sys.path
import numpy as np
import torch

from amc.reward import RacingReward, RewardEvaluator


def main(argv: list[str] | None = None, results: str | Path = common.RESULTS) -> None:
    parser = common.parser("reward_speed", __doc__)
    common.add_common_args(parser, weights="checkpoint", val_size=True, threads=torch.get_num_threads())
    parser.add_argument("--run", required=True, help="a finished search's run folder (its episodes.csv)")
    parser.add_argument("--policies", type=int, default=12, help="policies scored per set-up (default %(default)s)")
    args = common.parse_args(parser, argv)
    task = common.task_from_args(args, device="cpu")
    rows = list(csv.DictReader((Path(args.run) / "episodes.csv").read_text().splitlines()))
    picks = np.linspace(0, len(rows) - 1, min(args.policies, len(rows))).round().astype(int)
    policies = [np.array([int(rows[i][f"keep:{g.name}"]) // g.sections for g in task.pruner.groups]) for i in picks]
    base = task.evaluator
    n = len(base.val_y)

    def evaluator(dtype: torch.dtype) -> RewardEvaluator:
        return RewardEvaluator(task.pruner, base.val_x, base.val_y, refit_x=base.refit_x, dtype=dtype,
                               seed=task.settings["seed"] + 3)

    fp32, bf16 = evaluator(torch.float32), evaluator(torch.bfloat16)
    racing_fp32 = RacingReward(_Unfolded(fp32))
    default_racing = RacingReward(task.evaluator)
    setups = {
        "float32, unfolded, all of val (before)": lambda c: _plain(fp32, c, folded=False),
        "one CPU thread (else as before)": lambda c: _plain(fp32, c, folded=False, threads=1),
        "BatchNorm folded": lambda c: _plain(fp32, c, folded=True),
        "bfloat16 forward passes": lambda c: _plain(bf16, c, folded=False),
        "racing, first 1,000 images": lambda c: _raced(racing_fp32, c),
        "all levers (the default)": lambda c: _raced(default_racing, c),
    }
    reference: list[float] = []
    report_rows = []
    for name, run in setups.items():
        seconds, accuracies, images = [], [], []
        for counts in policies:
            started = time.perf_counter()
            accuracy, used = run(counts)
            seconds.append(time.perf_counter() - started)
            accuracies.append(accuracy)
            images.append(used)
        if not reference:
            reference = accuracies
        full = [i for i, used in enumerate(images) if used == n]
        early = [i for i, used in enumerate(images) if used < n]
        report_rows.append({
            "setup": name, "median_seconds": statistics.median(seconds), "mean_seconds": statistics.mean(seconds),
            "full_evaluations": len(full), "policies": len(policies),
            "max_gap_points_full": max((100 * abs(accuracies[i] - reference[i]) for i in full), default=None),
            "mean_error_points_early": (statistics.mean(100 * abs(accuracies[i] - reference[i]) for i in early)
                                        if early else None),
        })
        print(report_rows[-1], flush=True)
    before = report_rows[0]["mean_seconds"]
    report = common.summary(f"reward_speed_{args.model}", args, model=args.model, run=str(args.run),
                            reward_images=n, policies=[p.tolist() for p in policies], setups=report_rows,
                            cpu_bf16=str(task.evaluator.dtype))
    lines = [f"# The fast reward, lever by lever: {args.model}, {n} reward images", "", common.header(report),
             f"{len(policies)} policies of the search in `{Path(args.run).name}`, scored in search order. Accuracy "
             "gaps are to the float32, unfolded evaluation of the same policy.", "",
             "| set-up | mean s / policy | speed-up | scored on all of val | max val-acc gap (points) | "
             "mean error of early estimates (points) |", "|---|---|---|---|---|---|"]
    for row in report_rows:
        gap = "-" if row["max_gap_points_full"] is None else f"{row['max_gap_points_full']:.2f}"
        early = "-" if row["mean_error_points_early"] is None else f"{row['mean_error_points_early']:.2f}"
        lines.append(f"| {row['setup']} | {row['mean_seconds']:.2f} | {before / row['mean_seconds']:.2f}x | "
                     f"{row['full_evaluations']}/{row['policies']} | {gap} | {early} |")
    common.write(f"reward_speed_{args.model}", report, lines, results)


class _Unfolded:
    """A `RewardEvaluator` whose inference model keeps its BatchNorms (racing alone, without folding)."""

    def __init__(self, evaluator: RewardEvaluator) -> None:
        self.evaluator = evaluator
        self.val_y, self.score = evaluator.val_y, evaluator.score

    def inference_model(self, counts: np.ndarray) -> torch.nn.Module:
        return self.evaluator.prune(counts)


def _plain(evaluator: RewardEvaluator, counts: np.ndarray, *, folded: bool, threads: int | None = None):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    try:
        model = evaluator.inference_model(counts) if folded else evaluator.prune(counts)
        correct, _ = evaluator.score(model)
    finally:
        torch.set_num_threads(previous)
    return correct / len(evaluator.val_y), len(evaluator.val_y)


def _raced(racing: RacingReward, counts: np.ndarray):
    result = racing(counts)
    return result.accuracy, result.images


if __name__ == "__main__":
    main()
