"""Benchmark: how much CPU latency channel pruning can buy on this machine, against the MACs it removes.

The model is pruned to uniform widths (every prunable group, residual streams included, keeps a fraction `f` of
its channels, at least one), to the uniform policy of 50% of the MACs, and to the given policy files, then timed
as deployed (`amc.engine.measure.latencies`: BatchNorm folded into the convs, all models in interleaved rounds)
at batch 1 and `--batch` in both memory layouts. Latency does not depend on the weights, so the models are
untrained. The row that keeps one channel per group bounds what any policy can reach: the rest of the time is in
layers that channel pruning cannot narrow (the stem's input, the classifier's output) and in per-layer overhead.
Writes `bench/results/latency_<model>[_<size>].json` and `.md` (the size for inputs other than 32x32).

    python bench/latency.py --model resnet56 --threads 1 --policy amc=runs/r56/best_policy.json
    python bench/latency.py --model resnet50 --input-shape 3,224,224 --batch 16 --threads 1
"""

from __future__ import annotations

from pathlib import Path

import common  # bench/common.py; puts the repository on sys.path
import numpy as np
import torch

from amc.engine.budget import ratio_counts, uniform_counts
from amc.engine.cost import count_macs_params
from amc.engine.pruner import ChannelPruner
from amc.models import create_model
from amc.policy import Policy

FRACTIONS = (1.0, 0.75, 0.5, 0.25, 0.0)  # 0: every group keeps one channel (its minimum)


def main(argv: list[str] | None = None, results: str | Path = common.RESULTS) -> None:
    parser = common.parser("latency", __doc__)
    common.add_common_args(parser, data=False)
    parser.add_argument("--model", required=True, help="registry name of the model (untrained: latency does not "
                        "depend on the weights)")
    parser.add_argument("--input-shape", default="3,32,32", help="C,H,W of one input")
    parser.add_argument("--policy", action="append", default=[], metavar="NAME=FILE")
    parser.add_argument("--batch", type=int, default=common.LARGE_BATCH,
                        help="the large batch size, timed beside batch 1 (default %(default)s; 16 at 224x224)")
    args = common.parse_args(parser, argv)
    torch.manual_seed(args.seed)
    shape = tuple(int(p) for p in args.input_shape.split(","))
    dense = create_model(args.model).eval()
    pruner = ChannelPruner(dense, shape, selection="l1")

    def pruned(counts: np.ndarray) -> torch.nn.Module:
        return pruner.prune(pruner.kept_indices(counts), reconstruct=False)

    names = ["dense" if f == 1 else f"uniform {f:g}" if f > 0 else "one channel per group" for f in FRACTIONS]
    models = [pruned(ratio_counts(pruner, f)) for f in FRACTIONS]
    names.append("uniform at 50% MACs")
    models.append(pruned(uniform_counts(pruner, pruner.cost.macs, 0.5 * float(pruner.cost.macs(pruner.channels)))))
    for item in args.policy:
        name, path = item.split("=", 1)
        names.append(name)
        models.append(pruned(Policy.load(path).counts_for(pruner)))
    dense_macs = count_macs_params(dense, shape)[0]
    rows = [{"model": name, "macs_ratio": count_macs_params(m, shape)[0] / dense_macs, **timed}
            for name, m, timed in zip(names, models, common.latencies(models, shape, args.batch))]

    summary = common.summary("latency", args, model=args.model, rows=rows)
    lines = [
        f"# {args.model}: CPU speed-up of channel pruning against MACs (untrained weights, BatchNorm folded)",
        "",
        common.header(summary),
        "",
        "Median latency of interleaved rounds; contiguous / channels-last memory layout.",
        "",
        f"| model | MACs | ms @1 | ms @{args.batch} | speed-up @1 | speed-up @{args.batch} |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['macs_ratio']:.3f} | " + common.latency_cells(r, args.batch))
    size = "" if shape[1:] == (32, 32) else f"_{shape[1]}"  # the CIFAR size keeps the first name
    common.write(f"latency_{args.model}{size}", summary, lines, results)


if __name__ == "__main__":
    main()
