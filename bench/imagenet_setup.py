"""Benchmark: set-up time and peak memory of a search at ImageNet scale (224x224), on a synthetic image folder.

Writes a folder of JPEGs (`--distinct` different smooth random pictures, 200-500 pixels a side, repeated under
`--train-images` TRAIN file names in `--classes` class folders, plus `--test-images` in test/), then, each in a
fresh process so that each peak is its own:

1. cold: `prepare_task(MODEL, "imagefolder", image_size=224)` with a search's defaults (reward split a fifth of
   TRAIN, at most 5,000 images; selection 1,000; calibration 3,000; re-fit 256): listing the folder, building and
   analysing the model, decoding (and caching) the images it reads, the least-squares calibration; then one
   reward evaluation (the uniform policy at 50% FLOPs, pruned, re-fitted and scored on the reward split: what
   every episode costs);
2. warm: the same with the decoded images in the cache (a resumed or second search);
3. the training loader: images per second through the random-resized-crop transform with `--workers`
   decoding processes.

Seconds per phase and peak resident memory (ru_maxrss of the process; a decoding pool's processes apart) go to
`bench/results/imagenet_setup_<model>.json` and `.md`. Untrained weights: time and memory do not depend on them.

    python bench/imagenet_setup.py --model resnet50 --threads 2
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common  # bench/common.py; puts the repository on sys.path


def make_folder(root: Path, args: argparse.Namespace) -> None:
    """The synthetic ImageNet-like folder (see the module docstring); skipped when `root/done` exists."""
    import torch
    from PIL import Image

    if (root / "done").exists():
        return
    g = torch.Generator().manual_seed(args.seed)
    pictures = []
    for _ in range(args.distinct):
        w, h = (int(v) for v in torch.randint(200, 501, (2,), generator=g))
        coarse = torch.rand(1, 3, 6, 6, generator=g) * 255
        smooth = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)
        noisy = smooth[0] + 12 * torch.randn(3, h, w, generator=g)
        buf = io.BytesIO()
        Image.fromarray(noisy.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()).save(buf, "JPEG",
                                                                                                  quality=90)
        pictures.append(buf.getvalue())
    for split, n in (("train", args.train_images), ("test", args.test_images)):
        for i in range(n):
            folder = root / split / f"n{i % args.classes:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{split}_{i:07d}.JPEG").write_bytes(pictures[(i * 2654435761 % 2**32) % len(pictures)])
    (root / "done").touch()


def peak_mb() -> float:
    """The peak resident set size of this process so far, in MB (Linux counts KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args: argparse.Namespace) -> None:
    """One measured set-up in this process; prints its phases as one JSON line."""
    import torch

    from agents.baselines import uniform
    from amc.data.imagefiles import ImageFiles
    from amc.engine.budget import Budget
    from amc.engine.pruner import ChannelPruner
    from amc.reward import prepare_task

    torch.set_num_threads(args.threads)
    seconds: dict[str, float] = {"decode": 0.0, "analyse": 0.0, "calibrate": 0.0}

    def timed(owner: Any, name: str, phase: str) -> None:
        original = getattr(owner, name)

        def wrapper(*a: Any, **k: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*a, **k)
            finally:
                seconds[phase] += time.perf_counter() - start

        setattr(owner, name, wrapper)

    timed(ImageFiles, "load", "decode")
    timed(ChannelPruner, "__init__", "analyse")
    timed(ChannelPruner, "calibrate", "calibrate")
    start = time.perf_counter()
    task = prepare_task(args.model, None, "imagefolder", args.folder, image_size=args.image_size)
    seconds["setup"] = time.perf_counter() - start
    seconds["other"] = seconds["setup"] - seconds["decode"] - seconds["analyse"] - seconds["calibrate"]
    setup_peak = peak_mb()
    start = time.perf_counter()
    found = uniform(task, Budget("flops", 0.5))
    seconds["episode"] = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "peak_mb_setup": setup_peak, "peak_mb": peak_mb(),
                      "groups": len(task.pruner.groups),
                      "reward_images": len(task.evaluator.val_y), "select_images": len(task.evaluator.select_y),
                      "uniform_val_accuracy": found.val_accuracy}), flush=True)


def loader_speed(args: argparse.Namespace) -> dict[str, float]:
    """Training images per second through the streaming loader (random-resized crop and flip)."""
    import torch

    from amc.data.datasets import batches, load_dataset

    data = load_dataset("imagefolder", args.folder, image_size=args.image_size)
    n = min(len(data.train), args.loader_images)
    part = data.train.subset(torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))[:n])
    start = time.perf_counter()
    seen = sum(len(y) for _, y in batches(part, 64, data.mean, data.std, shuffle=True, augment=True,
                                          generator=torch.Generator().manual_seed(0), workers=args.workers))
    return {"images": seen, "workers": args.workers, "images_per_second": seen / (time.perf_counter() - start)}


def main(argv: list[str] | None = None, results: str | Path = common.RESULTS) -> None:
    parser = common.parser("imagenet_setup", __doc__)
    common.add_common_args(parser, data=False, val_size=False, runs=False, threads=2)
    parser.add_argument("--model", default="resnet50", help="registry name (default %(default)s)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--train-images", type=int, default=25000,
                        help="TRAIN file names (default %(default)s: a reward split of the default 5,000)")
    parser.add_argument("--test-images", type=int, default=500)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--distinct", type=int, default=300, help="different pictures among the files")
    parser.add_argument("--workers", type=int, default=1, help="decoding processes of the training loader")
    parser.add_argument("--loader-images", type=int, default=1024)
    parser.add_argument("--work", help="folder for the images and the cache (default: a new temporary folder)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    if argv is None and "--child" in sys.argv:
        args = parser.parse_args()
        args.folder = args.child
        child(args)
        return
    args = common.parse_args(parser, argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="amc-imagenet-setup-"))
    args.folder = str(work / "data")
    start = time.perf_counter()
    make_folder(work / "data", args)
    print(f"folder ready in {time.perf_counter() - start:.0f} s", flush=True)
    env = {**os.environ, "AMC_CACHE_DIR": str(work / "cache"), "PYTHONPATH": str(common.ROOT)}
    runs = {}
    for name in ("cold", "warm"):
        cmd = [sys.executable, __file__, "--child", args.folder, "--model", args.model, "--image-size",
               str(args.image_size), "--threads", str(args.threads), "--seed", str(args.seed)]
        out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
        runs[name] = json.loads(out.strip().splitlines()[-1])
        print(name, runs[name], flush=True)
    os.environ["AMC_CACHE_DIR"] = str(work / "cache")
    loader = loader_speed(args)
    print("loader", loader, flush=True)
    report = common.summary("imagenet_setup", args, model=args.model, image_size=args.image_size,
                            train_images=args.train_images, classes=args.classes, runs=runs, loader=loader)
    cold, warm = runs["cold"], runs["warm"]
    phases = ("decode", "analyse", "calibrate", "other", "setup", "episode")
    lines = [
        f"# {args.model} at {args.image_size}x{args.image_size}: set-up of a search (seconds, peak memory)",
        "",
        common.header(report),
        "",
        f"Synthetic image folder: {args.train_images:,} TRAIN JPEGs of 200-500 pixels a side in {args.classes} "
        f"classes; a search's defaults: reward split {cold['reward_images']:,} images, selection "
        f"{cold['select_images']:,}, calibration 3,000, re-fit 256; {cold['groups']} channel groups. "
        "Cold: nothing cached; warm: the decoded images cached. Episode: one reward evaluation (the uniform "
        "policy at 50% FLOPs, pruned, re-fitted, scored on the reward split).",
        "",
        "| run | " + " | ".join(phases) + " | peak MB after set-up | peak MB after the episode |",
        "|---|" + "---|" * (len(phases) + 2),
    ]
    for name, r in runs.items():
        lines.append(f"| {name} | " + " | ".join(f"{r['seconds'][p]:.1f}" for p in phases)
                     + f" | {r['peak_mb_setup']:,.0f} | {r['peak_mb']:,.0f} |")
    lines += ["", f"Training loader (random-resized crop and flip, {loader['workers']} decoding process(es)): "
              f"{loader['images_per_second']:.0f} images/s over {loader['images']} images.",
              "", f"Warm set-up is {cold['seconds']['setup'] / warm['seconds']['setup']:.2f}x faster than cold."]
    common.write(f"imagenet_setup_{args.model}", report, lines, results)


if __name__ == "__main__":
    main()
