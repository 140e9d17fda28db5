"""`amc train-agent`: the AMC search (agents.search), written to a resumable run folder."""

from __future__ import annotations

import argparse

from agents.config import ALGORITHMS, SearchConfig
from amc.cli import COUNT, FRACTION, LBOUND, command, number
from envs import REWARDS


def select_size_flag(parser: argparse.ArgumentParser) -> None:
    """`--select-size`, for the commands that choose a policy among many (train-agent, baseline)."""
    parser.add_argument("--select-size", type=number(int, 0, 10**9), default=SearchConfig.select_size, metavar="N",
                        help="images of the selection split (held-out TRAIN images no reward uses, or part of "
                             "--reward-data) on which the final policy is chosen among the best candidates "
                             "(0: the best reward wins) (default %(default)s)")


def _arguments(parser: argparse.ArgumentParser) -> None:
    d = SearchConfig
    parser.add_argument("--out", metavar="DIR",
                        help="the run folder (default runs/MODEL-KIND<percent>, e.g. runs/digits_cnn-flops50)")
    parser.add_argument("--force", action="store_true", help="replace the run folder --out if it has results")
    parser.add_argument("--reward", choices=REWARDS, default=d.reward,
                        help="acc, flops (-error*log MACs), params (-error*log params) or latency "
                             "(-error*log microseconds) (default %(default)s)")
    parser.add_argument("--episodes", type=COUNT, default=d.episodes, help="episodes in all (default %(default)s)")
    parser.add_argument("--warmup", type=number(int, 0, 10**9), default=d.warmup,
                        help="first episodes with uniformly random actions (default %(default)s)")
    parser.add_argument("--algo", choices=ALGORITHMS, default=d.algo, help="SB3 algorithm (default %(default)s)")
    parser.add_argument("--lbound", type=LBOUND, default=d.lbound, help="smallest preserve ratio (default %(default)s)")
    parser.add_argument("--rbound", type=FRACTION, default=d.rbound, help="largest preserve ratio (default %(default)s)")
    parser.add_argument("--race-images", type=number(int, 0, 10**9), default=d.race_images, metavar="N",
                        help="score every policy on N val images first and only the promising ones on all of val "
                             "(acc reward; 0: all of val for every policy) (default %(default)s)")
    parser.add_argument("--race-margin", type=number(float, 0, 1), default=d.race_margin, metavar="D",
                        help="a policy goes on to all of val when its accuracy on the first N images is at most D "
                             "below the best policy's there (default %(default)s)")
    select_size_flag(parser)
    parser.add_argument("--select-top", type=COUNT, default=d.select_top, metavar="K",
                        help="the K distinct policies with the best rewards are scored on the selection split at "
                             "the end; the best there is the final policy (default %(default)s)")
    parser.add_argument("--baseline-candidates", default=d.baseline_candidates, metavar="LIST",
                        help="dp and/or sensitivity (comma-separated): their policies join the final selection "
                             "(costs one sensitivity table; may be added to a finished run with --resume)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


@command(
    "train-agent", "search a pruning policy with the AMC agent (no arguments: the embedded digits model at 50%% FLOPs)",
    shared=("device", "model", "checkpoint", "dataset", "data_dir", "seed", "val_size", "reward_data", "budget",
            "selection", "ignore", "channel_round"),
    required=(),
    arguments=_arguments,
)
def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from agents.search import run_search
    from amc.cli import common
    from amc.engine.budget import Budget
    from amc.errors import AmcError
    from amc.models.zoo import digits_checkpoint

    budget = common.budget(args.target_flops, args.target_params, args.target_latency)
    budget = budget or Budget(SearchConfig.budget_kind, SearchConfig.budget_ratio)
    model = args.model or SearchConfig.model
    dataset = args.dataset or ("digits" if model == "digits_cnn" else None)
    if dataset is None:
        raise AmcError("train-agent needs --dataset (and --data-dir) for the reward; e.g. --dataset cifar10 --data-dir DIR")
    checkpoint = args.checkpoint
    if checkpoint is None and model == "digits_cnn" and dataset == "digits":
        checkpoint = str(digits_checkpoint())
    common.warn_if_untrained(model, checkpoint, "searching")
    out = args.out or str(Path("runs") / f"{Path(model).stem}-{budget.kind}{round(100 * budget.ratio)}")
    config = SearchConfig(
        model=model, checkpoint=checkpoint, dataset=dataset, data_dir=args.data_dir, image_size=args.image_size,
        budget_kind=budget.kind,
        budget_ratio=budget.ratio, reward=args.reward, latency_batch=args.latency_batch,
        latency_channels_last=args.latency_channels_last, episodes=args.episodes, warmup=args.warmup,
        val_size=args.val_size, reward_data=args.reward_data, select_size=args.select_size,
        select_top=args.select_top, baseline_candidates=args.baseline_candidates, seed=args.seed, algo=args.algo,
        lbound=args.lbound, rbound=args.rbound,
        selection=args.selection or SearchConfig.selection, race_images=args.race_images, ignore=args.ignore,
        race_margin=args.race_margin, channel_round=args.channel_round, device=args.device, out=out,
    )
    try:
        result = run_search(config, resume=args.resume, force=args.force, progress=not args.no_progress)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"every finished episode is kept in {out}: continue with the same arguments "
                                "plus --resume") from None
    best, uniform = result.best, result.uniform
    if args.json:
        common.print_json({"run": str(result.run_dir), "episodes": result.episodes, "seconds": result.seconds,
                           "best": best.to_dict(), "uniform": uniform.to_dict()})
        return 0
    print(f"run folder: {result.run_dir} ({result.episodes} episodes, {result.seconds / 60:.1f} min)")
    print(f"{'group':<24}{'channels':>9}{'amc':>6}{'uniform':>9}")
    for mine, flat in zip(best.groups, uniform.groups):
        print(f"{mine.name:<24}{mine.channels:>9}{mine.keep:>6}{flat.keep:>9}")
    for name, policy in (("amc", best), ("uniform", uniform)):
        p, extra = policy.predicted, policy.extra
        select = f"  selection split {100 * extra['select_accuracy']:.2f}%" if "select_accuracy" in extra else ""
        latency = (f"  latency {100 * extra['latency_measured']:.1f}% (table {100 * extra['latency_predicted']:.1f}%)"
                   if "latency_measured" in extra else "")
        print(f"{name:<8} val accuracy {100 * extra['val_accuracy']:.2f}%{select}  MACs {100 * p['macs_ratio']:.2f}%  "
              f"params {100 * p['params_ratio']:.2f}%{latency} of dense")
    if result.selection is not None:
        chosen, n = result.selection.best, len(result.selection.candidates)
        which = (f"episode {chosen.episode} (reward rank {result.selection.chosen + 1})" if chosen.source == "amc"
                 else f"the {chosen.source} baseline's policy")
        gap = 100 * result.selection.gap
        print(f"final policy: {which}, the best on the selection split of {n} candidate{'s' * (n != 1)}; its val accuracy is "
              f"{abs(gap):.2f} points {'above' if gap >= 0 else 'below'} its selection-split accuracy")
    print(f"best policy: {result.run_dir / 'best_policy.json'}")
    return 0
