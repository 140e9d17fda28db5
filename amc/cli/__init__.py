"""The `amc` command line: `amc eval | profile | baseline | apply | finetune | train-agent`.

One module per command (`amc/cli/<command>.py`) registers it with `@command(...)`, naming the shared flags it
takes (each defined once in `SHARED_FLAGS`, so every command spells and documents them the same way) and a
function adding its own flags. Command modules import only the standard library and light constants at
their top: torch, Torch-Pruning, SB3 and Gymnasium load inside the command's run function, so `--help` and
argument errors answer at once. Errors the user can fix (`AmcError`) print one line `amc: error: ...` and
exit 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import math
import os
import re
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from amc import __version__
from amc.data import DATASETS
from amc.engine import SELECTIONS
from amc.errors import AmcError, one_line

CommandFn = Callable[[argparse.Namespace], int]
AddArguments = Callable[[argparse.ArgumentParser], None]
AddShared = Callable[[argparse.ArgumentParser, bool], None]

# Command modules, in the order `amc --help` lists them; each registers itself on import.
COMMAND_MODULES = ("eval", "profile", "baseline", "apply", "finetune", "train_agent")


def number(kind: type, low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Callable:
    """An argparse `type` accepting a finite `kind` (int or float) in the interval [low, high] (open at an end
    with `low_open` / `high_open`): every numeric flag is checked when parsed, before any work."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        below = value <= low if low_open else value < low
        above = value >= high if high_open else value > high
        if not math.isfinite(value) or below or above:
            bounds = (f"{low:g}, {high:g}" if kind is float else f"{low}, {high}")
            interval = f"{'(' if low_open else '['}{bounds}{')' if high_open else ']'}"
            raise argparse.ArgumentTypeError(f"{text} is outside {interval}")
        return value

    return parse


SEED = number(int, 0, 2**32 - 1)
COUNT = number(int, 1, 10**9)  # episodes, images, batch sizes
THREADS = number(int, 1, 1024)
FRACTION = number(float, 0.0, 1.0, low_open=True)  # budgets, the upper preserve ratio
LBOUND = number(float, 0.0, 1.0, high_open=True)  # the lower preserve ratio


def device_name(text: str) -> str:
    """An argparse `type` for --device: auto, cpu, cuda or cuda:N (whether it exists is checked when the command
    runs)."""
    if re.fullmatch(r"auto|cpu|cuda(:\d+)?", text) is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device; use auto, cpu, cuda or cuda:N")
    return text


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
    group.add_argument("--target-flops", type=FRACTION, metavar="R", help="keep at most R of the dense MACs, R in (0, 1]")
    group.add_argument("--target-params", type=FRACTION, metavar="R", help="keep at most R of the dense parameters")
    group.add_argument("--target-latency", type=FRACTION, metavar="R",
                       help="keep at most R of the dense CPU latency (a per-layer table is measured once)")
    parser.add_argument("--latency-batch", type=number(int, 1, 65536), default=1, metavar="N",
                        help="batch size the latency table is measured at (default %(default)s)")
    parser.add_argument("--latency-channels-last", action="store_true",
                        help="measure the latency table in channels-last memory layout (see amc eval --channels-last)")


def _data_dir_flags(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument("--data-dir", required=required, metavar="DIR", help="folder holding the dataset's files")
    parser.add_argument("--image-size", type=number(int, 8, 4096), metavar="SIDE",
                        help="imagefolder: read images of any size from disk at SIDE x SIDE pixels, RGB (resize and "
                             "centre crop; training: random-resized crop and flip), e.g. 224 for ImageNet models")


def _checkpoint_flags(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument("--checkpoint", required=required, metavar="FILE",
                        help="trained weights of the dense model (torch file)")
    unsafe_unpickle_flag(parser)


def unsafe_unpickle_flag(parser: argparse.ArgumentParser) -> None:
    """`--unsafe-unpickle`, for every command that reads a checkpoint."""
    parser.add_argument("--unsafe-unpickle", action="store_true",
                        help="also load checkpoints holding pickled Python objects (a whole model); unpickling RUNS "
                        "ANY CODE the file holds: only for files you made yourself")


SHARED_FLAGS: dict[str, AddShared] = {
    "model": _flag(
        "--model", metavar="MODEL", help="registered name (e.g. resnet56), pkg.mod:factory, file.py:factory, "
        "or (eval, profile, finetune) an amc pruned-model file NAME.pt",
    ),
    "checkpoint": _checkpoint_flags,
    "dataset": _flag("--dataset", metavar="NAME", choices=DATASETS, help="one of %(choices)s"),
    "data_dir": _data_dir_flags,
    "input_shape": _flag(
        "--input-shape", type=_input_shape, metavar="C,H,W",
        help="one input's shape, when no --dataset is given (default 3,32,32)",
    ),
    "seed": _flag("--seed", type=SEED, default=0,
                  help="seed of the train/val split and calibration sample (default %(default)s)"),
    "val_size": _flag(
        "--val-size", type=COUNT, metavar="N",
        help="TRAIN images held out as the val split (default: a fifth, at most 5000)",
    ),
    "reward_data": _flag(
        "--reward-data", metavar="DIR",
        help="your own validation images, DIR/<class>/*, for the rewards and the selection split instead of "
        "held-out TRAIN images (use it when the model was trained on every TRAIN image)",
    ),
    "ignore": _flag(
        "--ignore", metavar="LAYERS", default="",
        help="comma-separated layers whose output channels are never pruned: every channel group that would narrow "
        "one keeps its full width (e.g. a CIFAR ResNet's residual streams: conv1,layer2.0.conv2,layer3.0.conv2; "
        "amc profile marks each model's residual streams, and --json lists every group's layers)",
    ),
    "selection": _flag(
        "--selection", choices=SELECTIONS,
        help="how a group's kept channels are chosen: ls (default: greedy least squares on the calibration "
        "images, the channels the re-fit replaces best), or by weight norm: l1, l2, bn (BatchNorm scale)",
    ),
    "channel_round": _flag(
        "--channel-round", type=number(int, 1, 4096), default=1, metavar="N",
        help="keep a multiple of N channels in every group, or the whole group (AMC's channel rounding; 8 makes "
        "pruned models much faster on CPUs and GPUs, whose kernels favour such widths; default %(default)s)",
    ),
    "out": _flag("--out", metavar="FILE", help="file to write"),
    "force": _flag("--force", action="store_true", help="overwrite --out if it exists"),
    "budget": _budget_flags,
    "device": _flag("--device", type=device_name, default="auto", metavar="DEVICE",
                    help="where the command computes: auto (the first CUDA device if there is one, else the CPU), "
                    "cpu, cuda or cuda:N (default %(default)s)"),
    "json": _flag("--json", action="store_true", help="print the result as one JSON object"),
    "debug": _flag("--debug", action="store_true", help="show the traceback of an error"),
}
_EVERY_COMMAND = ("json", "debug")


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line, like amc's own: `amc: error: amc CMD: ...; see amc CMD --help`."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"amc: error: {self.prog}: {message}; see {self.prog} --help\n")


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

    `shared` names the flags of `SHARED_FLAGS` it takes (--json and --debug always), `required` those
    of them that must be given, and `arguments` adds the command's own flags to its parser.
    """

    def register(run: CommandFn) -> CommandFn:
        wrong = (set(shared) | set(required)) - set(SHARED_FLAGS) or set(required) - set(shared)
        if wrong:
            raise ValueError(f"command {name}: shared flags {sorted(wrong)} are unknown or not in `shared`")
        _COMMANDS[name] = _Command(run, help, tuple(shared), tuple(required), arguments)
        return run

    return register


def build_parser() -> argparse.ArgumentParser:
    """The `amc` argument parser with every registered subcommand."""
    for module in COMMAND_MODULES:
        importlib.import_module(f"amc.cli.{module}")
    parser = _Parser(prog="amc", description="AMC: channel pruning of trained CNNs under a budget.")
    parser.add_argument("--version", action="version", version=f"amc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, cmd in _COMMANDS.items():
        shared = _Parser(add_help=False)
        for flag in (*cmd.shared, *_EVERY_COMMAND):
            SHARED_FLAGS[flag](shared, flag in cmd.required)
        # `help` is %-formatted by argparse, `description` is not
        child = sub.add_parser(name, parents=[shared], help=cmd.help, description=cmd.help.replace("%%", "%"))
        if cmd.arguments is not None:
            cmd.arguments(child)
        child.set_defaults(run=cmd.run)
    return parser


def _check_flag_combinations(args: argparse.Namespace) -> None:
    """Refuse, before any work, flags that the other flags would make this command ignore."""
    dataset = getattr(args, "dataset", None)
    if getattr(args, "image_size", None) and not dataset:
        raise AmcError(f"--image-size {args.image_size} reads an image folder at that size: pass --dataset imagefolder "
                       "--data-dir DIR (without data, --input-shape 3,SIDE,SIDE sets the size)")
    if getattr(args, "input_shape", None) and dataset:
        raise AmcError(f"--input-shape is for runs without data; --dataset {dataset} sets the shape (an image folder's "
                       "size with --image-size): drop --input-shape")
    if getattr(args, "workers", None) and not getattr(args, "image_size", None):
        warnings.warn("--workers decodes image files read with --image-size; without it the images are in memory and "
                      "batched in this process, so it has no effect")


def main(argv: Sequence[str] | None = None) -> int:
    """Run `amc` with `argv` (default: the process's arguments); returns the exit code."""
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse's own errors (exit 2), --help and --version (exit 0)
        return exc.code if isinstance(exc.code, int) else 2
    except KeyboardInterrupt:  # Ctrl-C during start-up: nothing was done
        print("amc: interrupted before anything was done", file=sys.stderr)
        return 130
    with warnings.catch_warnings(), _unpickling(getattr(args, "unsafe_unpickle", False)):
        warnings.showwarning = _show_warning
        try:
            _check_flag_combinations(args)
            if getattr(args, "device", None):  # before any work: an unavailable device is one line, exit 2
                from amc.engine.device import resolve_device

                args.device = str(resolve_device(args.device))
            return args.run(args)
        except AmcError as exc:
            if args.debug:
                raise
            print(f"amc: error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as exc:
            print(f"amc: interrupted{'; ' + str(exc) if str(exc) else ''}", file=sys.stderr)
            return 130
        except BrokenPipeError:  # the reader of the output went away (`amc profile | head`): nothing to report
            with contextlib.suppress(OSError, ValueError, AttributeError):  # stdout may not be a file
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at Python's flush
            return 0
        except Exception as exc:
            if args.debug:
                raise
            print(f"amc: internal error: {one_line(exc)}; rerun with --debug for the traceback",
                  file=sys.stderr)
            return 1


def _unpickling(unsafe: bool) -> contextlib.AbstractContextManager[None]:
    if not unsafe:
        return contextlib.nullcontext()
    from amc.models.checkpoint import unsafe_unpickling  # imports torch: only when asked for

    return unsafe_unpickling()


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    # One line per warning, like errors: where in amc it was raised does not help the user.
    print(f"amc: warning: {message}", file=sys.stderr)
