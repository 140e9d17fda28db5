"""What every benchmark shares: its flags, the task it measures, and what it writes.

- `parser` + `add_common_args` + `parse_args`: the flags every benchmark takes (`--threads`, `--seed`,
  `--dataset`/`--data-dir`, `--val-size`, `--runs`) and ONE weights convention: `--model NAME --checkpoint
  FILE` for a single-model benchmark, `--models a,b --weights DIR` (`checkpoint_path`) for a multi-model one;
- `search_config` / `task_from_args`: the task through `SearchConfig` (the one source of defaults) and
  `SearchConfig.prepare_task`;
- `run_folder`: the search run folder of a benchmark, named by everything that must agree to resume it;
- `summary` + `header` + `write`: `bench/results/NAME.json` (opening with benchmark, command, seed,
  machine) and a short Markdown table `NAME.md` (with the "Command: ...; seed ...; machine: ..." line).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DEFAULT_WEIGHTS = ROOT.parent / "shared" / "weights"
sys.path.insert(0, str(ROOT))  # the repository, so that `amc` and `agents` import from this checkout

import torch  # noqa: E402

from agents.config import SearchConfig  # noqa: E402
from amc.data import DATASETS  # noqa: E402
from amc.engine import measure  # noqa: E402
from amc.fileio import atomic_write_json, atomic_write_text  # noqa: E402

# the large batch of every latency a benchmark reports (beside batch 1), each in both memory layouts
LARGE_BATCH = 64
# data sets that load without --data-dir
EMBEDDED_DATASETS = ("digits", "synthetic")


# ---- flags ----------------------------------------------------------------------------------------

def parser(script: str, doc: str) -> argparse.ArgumentParser:
    """The argument parser of `bench/SCRIPT.py`, described by the first line of its docstring `doc`."""
    return argparse.ArgumentParser(prog=f"bench/{script}.py", description=doc.splitlines()[0])


def add_common_args(parser: argparse.ArgumentParser, *, weights: str | None = None, data: bool = True,
                    val_size: bool = False, seed: bool = True, runs: bool = False, threads: int = 1) -> None:
    """Add the flags benchmarks share.

    Args:
        weights: "checkpoint": `--model NAME --checkpoint FILE` (one model); "dir": `--models a,b
            --weights DIR`, the checkpoint of model m being `checkpoint_path(DIR, m)`; None: neither.
        data: `--dataset` and `--data-dir`.
        val_size: `--val-size`, the reward split (SearchConfig's default).
        seed: `--seed` (SearchConfig's default).
        runs: `--runs`, the folder of the benchmarks' search run folders.
        threads: the default of `--threads`, torch's CPU threads.
    """
    if weights == "checkpoint":
        parser.add_argument("--model", required=True, help="registry name of the dense model, e.g. resnet56")
        parser.add_argument("--checkpoint", required=True,
                            help="its trained weights, e.g. ../shared/weights/resnet56-cifar10jpg.pt")
    elif weights == "dir":
        parser.add_argument("--models", default="resnet20,resnet56",
                            help="comma-separated registry names (default %(default)s)")
        parser.add_argument("--weights", default=str(DEFAULT_WEIGHTS),
                            help="folder of the checkpoints MODEL-cifar10jpg.pt (default %(default)s)")
    elif weights is not None:
        raise ValueError(f"weights must be 'checkpoint', 'dir' or None, not {weights!r}")
    if data:
        parser.add_argument("--dataset", default="imagefolder", choices=DATASETS,
                            help="how to read the data (default %(default)s: train/ and test/ class folders of "
                                 "images, as the committed CIFAR-10 results)")
        parser.add_argument("--data-dir", help="the data folder (needed for every dataset but "
                                               + " and ".join(EMBEDDED_DATASETS) + ")")
        parser.add_argument("--image-size", type=int,
                            help="imagefolder: read images of any size at this side in pixels (amc --image-size)")
    if val_size:
        parser.add_argument("--val-size", type=int, default=SearchConfig.val_size,
                            help="TRAIN images held out as the reward split (default: SearchConfig's, a fifth "
                                 "of TRAIN, at most 5,000)")
    if seed:
        parser.add_argument("--seed", type=int, default=SearchConfig.seed,
                            help="seed of the split, the calibration sample and everything random "
                                 "(default %(default)s)")
    if runs:
        parser.add_argument("--runs", default=str(ROOT / "runs"),
                            help="folder of the search run folders, resumed when they exist (default %(default)s)")
    parser.add_argument("--threads", type=int, default=threads, help="torch CPU threads (default %(default)s)")


def add_search_args(parser: argparse.ArgumentParser, *, flops: bool = True) -> None:
    """The flags of a benchmark that runs the AMC search: `--target-flops` (when `flops`), `--episodes`, `--warmup`
    (the baselines' settings: 300 and 100), `--channel-round`."""
    if flops:
        parser.add_argument("--target-flops", type=float, default=0.5)
    parser.add_argument("--episodes", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--channel-round", type=int, default=SearchConfig.channel_round,
                        help="kept channels per group are multiples of this (default %(default)s: any count)")


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse `argv` (default: the command line), check that a data folder is given where one is needed,
    make the paths of checkpoints and data absolute, set torch's CPU threads, and record the command that
    reproduces the run as `args.command`.

    Absolute paths: a search's config records them and a resumed search must match them, so two benchmarks
    naming the same files differently (`--checkpoint ../w/m.pt`, `--weights /abs/w`) still share a run."""
    args = parser.parse_args(argv)
    if getattr(args, "dataset", None) not in (None, *EMBEDDED_DATASETS) and not args.data_dir:
        parser.error(f"--dataset {args.dataset} needs --data-dir")
    for key in ("checkpoint", "weights", "data_dir"):
        if getattr(args, key, None):
            setattr(args, key, str(Path(getattr(args, key)).expanduser().resolve()))
    args.command = f"python {parser.prog} " + " ".join(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    return args


def checkpoint_path(weights_dir: str | Path, model: str) -> Path:
    """The checkpoint of `model` in a weights folder: `DIR/{model}-cifar10jpg.pt`."""
    return Path(weights_dir) / f"{model}-cifar10jpg.pt"


def models(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(model, checkpoint) for every model of `--models`, the checkpoints from `--weights`."""
    return [(m, str(checkpoint_path(args.weights, m))) for m in args.models.split(",")]


# ---- the task -------------------------------------------------------------------------------------

def search_config(args: argparse.Namespace, **fields: Any) -> SearchConfig:
    """The `SearchConfig` of the task a benchmark measures: model and checkpoint (from `--model
    --checkpoint`, or `model=`/`checkpoint=` for a multi-model benchmark), dataset, data folder, image size, reward
    split and seed from `args`; `fields` set the rest. Every other setting is SearchConfig's default."""
    given = {"model": getattr(args, "model", None), "checkpoint": getattr(args, "checkpoint", None),
             "dataset": args.dataset, "data_dir": args.data_dir, "image_size": getattr(args, "image_size", None),
             "val_size": getattr(args, "val_size", SearchConfig.val_size), "seed": args.seed,
             "ignore": getattr(args, "ignore", SearchConfig.ignore),
             "channel_round": getattr(args, "channel_round", SearchConfig.channel_round)}
    return SearchConfig(**{**given, **fields})


def stream_producers(model: str, input_shape: tuple[int, ...] = (3, 32, 32)) -> str:
    """The layers producing a model's residual streams, comma-separated (an `--ignore` value): the producers of
    every group that residual adds join (`ChannelGroup.residual_stream`)."""
    from amc.engine.pruner import ChannelPruner
    from amc.models import create_model

    pruner = ChannelPruner(create_model(model).eval(), input_shape, selection="l1")
    return ",".join(sorted(name for g in pruner.groups if g.residual_stream for name in g.producers))


def task_from_args(args: argparse.Namespace, **fields: Any) -> Any:
    """The `amc.reward.Task` of `search_config(args, **fields)`, prepared by `SearchConfig.prepare_task`."""
    return search_config(args, **fields).prepare_task()


def resolve_val_size(args: argparse.Namespace) -> int:
    """The number of reward images `--val-size` means (SearchConfig's default, None, resolved on the
    dataset's TRAIN split); also stored back into `args.val_size`, so that run folders and results
    record the number."""
    if args.val_size is None:
        from amc.data.datasets import load_dataset
        from amc.data.split import default_val_size

        data = load_dataset(args.dataset, args.data_dir, image_size=getattr(args, "image_size", None))
        args.val_size = default_val_size(len(data.train))
    return args.val_size


def search_tag(model: str, ratio: float, seed: int, channel_round: int = 1) -> str:
    """`{model}_f{pct}`, plus `_s{seed}` for a seed other than 0 and `_r{n}` for channel rounding: the name of a
    search's results."""
    return (f"{model}_f{round(100 * ratio)}" + (f"_s{seed}" if seed else "")
            + (f"_r{channel_round}" if channel_round > 1 else ""))


def run_folder(runs: str | Path, config: SearchConfig) -> Path:
    """The run folder of a benchmark's FLOPs-budget search, `RUNS/bench-{model}_f{pct}_v{val}_s{seed}[_r{n}]`:
    benchmarks that search with the same model, budget, reward split and seed share it (and resume it);
    others never resume each other's runs. `config.val_size` must be a number (`resolve_val_size`)."""
    if config.val_size is None:
        raise ValueError("resolve the reward split size first (resolve_val_size)")
    return Path(runs) / (f"bench-{config.model}_f{round(100 * config.budget_ratio)}_v{config.val_size}"
                         f"_s{config.seed}" + (f"_r{config.channel_round}" if config.channel_round > 1 else ""))


def in_run_folder(runs: str | Path, config: SearchConfig) -> SearchConfig:
    """`config` writing to its benchmark run folder (`run_folder`)."""
    return dataclasses.replace(config, out=str(run_folder(runs, config)))


# ---- what a benchmark writes ----------------------------------------------------------------------

def machine(threads: int) -> str:
    """The machine a number was measured on, in words."""
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {threads}"


def summary(name: str, args: argparse.Namespace, **fields: Any) -> dict[str, Any]:
    """The JSON report of benchmark `name`: benchmark, command, seed and machine, then `fields` (a `seed`
    among them replaces `args.seed`)."""
    return {"benchmark": name, "command": args.command, "seed": getattr(args, "seed", None),
            "machine": machine(args.threads), **fields}


def header(summary: dict[str, Any]) -> str:
    """The Markdown line saying how a result was made: "Command: `...`; seed S; machine: M."."""
    return f"Command: `{summary['command']}`; seed {summary['seed']}; machine: {summary['machine']}."


def write(name: str, report: dict[str, Any], lines: list[str], results: str | Path = RESULTS) -> None:
    """Write the JSON report and the Markdown lines as `results/NAME.json` and `.md`, and print the table."""
    out = Path(results) / name
    atomic_write_json(out.with_suffix(".json"), report)
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


def latency_settings(large: int = LARGE_BATCH) -> list[tuple[str, int, bool]]:
    """(key, batch size, channels-last) of every latency a benchmark reports: batch 1 and `large`, contiguous and
    channels-last; the keys are "1", "64", "1 cl", "64 cl" for `large` 64."""
    return [(f"{b}{' cl' if last else ''}", b, last) for last in (False, True) for b in (1, large)]


def latencies(models: list[Any], shape: tuple[int, ...], large: int = LARGE_BATCH,
              **timing: Any) -> list[dict[str, dict[str, float]]]:
    """Per model: `latency_ms` (median CPU ms) and `speedup` over the first model, keyed as `latency_settings(large)`;
    the models are timed as deployed, in interleaved rounds (`amc.engine.measure.latencies`, which takes `timing`:
    repeats, min_run_time)."""
    ms: list[dict[str, float]] = [{} for _ in models]
    for key, batch, channels_last in latency_settings(large):
        for row, value in zip(ms, measure.latencies(models, shape, batch, channels_last=channels_last, **timing)):
            row[key] = value
    return [{"latency_ms": m, "speedup": {key: ms[0][key] / m[key] for key in m}} for m in ms]


def latency_cells(row: dict[str, Any], large: int = LARGE_BATCH) -> str:
    """Markdown cells `ms @1 | ms @large | speed-up @1 | speed-up @large`, each contiguous / channels-last."""
    ms, up, b = row["latency_ms"], row["speedup"], str(large)
    return (f"{ms['1']:.2f} / {ms['1 cl']:.2f} | {ms[b]:.1f} / {ms[b + ' cl']:.1f} | "
            f"{up['1']:.2f}x / {up['1 cl']:.2f}x | {up[b]:.2f}x / {up[b + ' cl']:.2f}x |")
