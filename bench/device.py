"""Benchmark: the resnet56 search at 50% FLOPs on a CUDA device, timed, and checked against the CPU.

Runs `run_search` with the default settings (`SearchConfig`) on `--device` and reports the set-up time (data,
analysis, calibration), the median episode time and the whole search's time. Then the same channel counts (the
best policy, the uniform one and `--agreement` episodes of the search) are evaluated by a task prepared on the
CPU: the val accuracies must agree within 0.2 points (bfloat16 forward passes on the device, where it has them;
the CPU's own precision there). Writes `bench/results/device_<model>_f<pct>.json` and `.md`.

It runs on a bare GPU machine whose PyTorch may be older than 2.13 and which lacks gymnasium, stable-baselines3
and torch-pruning: bring their wheels and point `--wheels` at them, and bring the data as the tarball:

    pip download --no-deps -d .device/wheels gymnasium stable-baselines3 torch-pruning cloudpickle \
        farama-notifications          # on a machine with an index
    cp ../shared/data/cifar10-jpg.tar.gz ../shared/weights/resnet56-cifar10jpg.pt .device/
    python bench/device.py --model resnet56 --wheels .device/wheels --data-tar .device/cifar10-jpg.tar.gz \
        --checkpoint .device/resnet56-cifar10jpg.pt --device cuda
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path


def install_wheels(folder: str) -> None:
    """pip-install the wheels in `folder` without an index and without touching the machine's torch."""
    wheels = sorted(str(p) for p in Path(folder).glob("*.whl"))
    if wheels:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", *wheels], check=True)


def main(argv: list[str] | None = None, results: str | Path | None = None) -> None:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--wheels")
    known, _ = pre.parse_known_args(argv)
    if known.wheels:  # before anything imports gymnasium, SB3 or torch-pruning
        install_wheels(known.wheels)

    import common  # bench/common.py; puts the repository on sys.path
    import numpy as np
    import torch

    from agents.search import run_search
    from amc.reward import prepare_task

    parser = common.parser("device", __doc__)
    common.add_common_args(parser, weights="checkpoint", threads=torch.get_num_threads())
    parser.add_argument("--wheels", help="folder of wheels to install first (gymnasium, stable-baselines3, ...)")
    parser.add_argument("--data-tar", help="the data as a .tar.gz of train/ and test/ folders, extracted to a "
                                           "temporary folder (instead of --data-dir)")
    parser.add_argument("--device", default="cuda", help="the device searched on (default %(default)s)")
    parser.add_argument("--target-flops", type=float, default=0.5)
    parser.add_argument("--episodes", type=int, default=None, help="default: SearchConfig's")
    parser.add_argument("--warmup", type=int, default=None, help="default: SearchConfig's")
    parser.add_argument("--agreement", type=int, default=8, help="search episodes re-evaluated on the CPU")
    if argv is None:
        argv = sys.argv[1:]
    if "--data-tar" in argv and "--data-dir" not in argv:
        argv = [*argv, "--data-dir", "-"]  # filled in below, once extracted
    args = common.parse_args(parser, argv)
    with tempfile.TemporaryDirectory() as tmp:
        if args.data_tar:
            with tarfile.open(args.data_tar) as tar:
                tar.extractall(tmp, filter="data")
            found = [p.parent for p in Path(tmp).rglob("train") if (p.parent / "test").is_dir()]
            args.data_dir = str(found[0])
        fields = {"budget_ratio": args.target_flops, "device": args.device, "out": str(Path(tmp) / "run")}
        if args.episodes is not None:
            fields["episodes"] = args.episodes
        if args.warmup is not None:
            fields["warmup"] = args.warmup
        config = common.search_config(args, **fields)

        started = time.perf_counter()
        task = config.prepare_task()
        if task.evaluator.device.type == "cuda":
            torch.cuda.synchronize()
        setup = time.perf_counter() - started
        result = run_search(config, progress=False, task=task)
        whole = time.perf_counter() - started
        log = list(csv.DictReader((result.run_dir / "episodes.csv").read_text().splitlines()))
        seconds = [float(r["seconds"]) for r in log]

        # the same channel counts on the CPU
        picks = [result.best.counts_for(task.pruner), result.uniform.counts_for(task.pruner)]
        rng = np.random.default_rng(args.seed)
        for i in rng.choice(len(log), size=min(args.agreement, len(log)), replace=False):
            picks.append(np.array([int(log[i][f"keep:{g.name}"]) // g.sections for g in task.pruner.groups]))
        on_device = [task.evaluator(c).accuracy for c in picks]
        device_name = str(task.evaluator.device)
        cpu_task = prepare_task(**config.task_settings(), device="cpu")
        on_cpu = [cpu_task.evaluator(c).accuracy for c in picks]
    gaps = [100 * abs(a - b) for a, b in zip(on_device, on_cpu)]
    name = f"device_{config.model}_f{round(100 * config.budget_ratio)}"
    gpu = torch.cuda.get_device_name(task.evaluator.device) if task.evaluator.device.type == "cuda" else "none"
    report = common.summary(name, args, device=device_name, gpu=gpu, torch=torch.__version__,
                            reward_dtype=str(task.evaluator.dtype), episodes=len(log), setup_s=setup,
                            episode_median_s=float(np.median(seconds)), search_s=whole,
                            full_evaluations=sum(int(r["val_images"]) == len(task.val_idx) for r in log),
                            best_val_accuracy=on_device[0], agreement={"device": on_device, "cpu": on_cpu,
                                                                       "max_gap_points": max(gaps)})
    lines = [f"# The resnet56 search on {device_name} ({gpu})", "", common.header(report),
             f"torch {torch.__version__}; reward forward passes in {task.evaluator.dtype}.", "",
             "| set-up (s) | median episode (s) | whole search (s) | episodes | best val acc (%) | "
             "max val-acc gap to the CPU (points) |", "|---|---|---|---|---|---|",
             f"| {setup:.1f} | {np.median(seconds):.3f} | {whole:.1f} | {len(log)} | {100 * on_device[0]:.2f} | "
             f"{max(gaps):.3f} ({len(picks)} policies) |"]
    common.write(name, report, lines, results or common.RESULTS)
    if max(gaps) > 0.2:
        raise SystemExit(f"the device and the CPU disagree by {max(gaps):.2f} points (> 0.2)")


if __name__ == "__main__":
    main()
