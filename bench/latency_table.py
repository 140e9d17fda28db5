"""Benchmark: how well the latency table predicts whole models it was not calibrated on.

Measures a model's latency table (`amc.engine.latency.LatencyTable.measure` at `--batch`, channels-last if
`--channels-last`), then times, in one measurement of interleaved rounds, the dense model and test policies: uniform
ones keeping 0.9, 0.8, ..., 0.2 of every group, and `--random` policies drawing every group's preserve ratio
uniformly from [0.2, 1] (with `--channel-round N`, every count on that grid). Each measured latency ratio is set
against two predictions: the table's (the layers' savings times one scale, fitted by least squares on four whole
models keeping about 3/4, 1/2, 1/4, 1/8 of every group) and the scale fitted at the one near half alone (amc's
earlier calibration). Untrained weights: time does not depend on them. Writes
`bench/results/latency_table_<model>[_r<N>].json` and `.md`.

    python bench/latency_table.py --model resnet56 --batch 64 --channels-last --threads 1
"""

from __future__ import annotations

from pathlib import Path

import common  # bench/common.py; puts the repository on sys.path
import numpy as np

from amc.engine.budget import min_counts, ratio_counts
from amc.engine.latency import LatencyTable, narrowed_copy
from amc.engine.measure import latencies
from amc.engine.pruner import ChannelPruner
from amc.models import create_model


def main(argv: list[str] | None = None, results: str | Path = common.RESULTS) -> None:
    parser = common.parser("latency_table", __doc__)
    common.add_common_args(parser, data=False)
    parser.add_argument("--model", default="resnet56")
    parser.add_argument("--input-shape", default="3,32,32", help="C,H,W (default %(default)s)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--random", type=int, default=8, help="random policies (default %(default)s)")
    parser.add_argument("--channel-round", type=int, default=1,
                        help="the table and the test policies keep multiples of this (default %(default)s)")
    args = common.parse_args(parser, argv)
    shape = tuple(int(v) for v in args.input_shape.split(","))
    pruner = ChannelPruner(create_model(args.model).eval(), shape, selection="l1", channel_round=args.channel_round)
    table = LatencyTable.measure(pruner, batch_size=args.batch, channels_last=args.channels_last)
    rng = np.random.default_rng(args.seed)
    policies = {f"uniform {f:.1f}": ratio_counts(pruner, f) for f in np.arange(0.9, 0.15, -0.1)}
    for i in range(args.random):
        policies[f"random {i + 1}"] = ratio_counts(pruner, rng.uniform(0.2, 1.0, len(pruner.groups)))
    policies = {name: np.maximum(min_counts(pruner), keep) for name, keep in policies.items()}
    models = [pruner.model] + [narrowed_copy(pruner, keep) for keep in policies.values()]
    dense, *measured = latencies(models, shape, args.batch, channels_last=args.channels_last)
    # amc's earlier calibration: the raw saving times one scale, fitted at the model near half of every group
    half_raw, half_measured = table.calibration[1]
    scale = (table.dense - half_measured) / (table.dense - half_raw)
    rows = []
    for (name, keep), ms in zip(policies.items(), measured):
        rows.append({"policy": name, "counts": keep.tolist(), "measured": ms / dense,
                     "table": float(table(keep)) / table.dense,
                     "one_scale": (table.dense - scale * (table.dense - float(table.raw(keep)))) / table.dense,
                     "macs": float(pruner.cost.macs(keep) / pruner.cost.macs(pruner.channels))})
    err = {k: [abs(r[k] - r["measured"]) for r in rows] for k in ("table", "one_scale")}
    name = f"latency_table_{args.model}" + (f"_r{args.channel_round}" if args.channel_round > 1 else "")
    summary = common.summary(name, args, model=args.model, input_shape=list(shape),
                             batch=args.batch, channels_last=args.channels_last, dense_ms=dense,
                             table_dense_ms=table.dense, calibration=table.calibration, rows=rows,
                             mean_abs_error={k: float(np.mean(v)) for k, v in err.items()},
                             max_abs_error={k: float(np.max(v)) for k, v in err.items()})
    layout = "channels-last" if args.channels_last else "contiguous"
    rounding = f", channel rounding {args.channel_round}" if args.channel_round > 1 else ""
    lines = [f"# {args.model}: the latency table against timed whole models (batch {args.batch}, {layout}{rounding})",
             "",
             common.header(summary) + f" Dense: {dense:.1f} ms (table: {table.dense:.1f} ms).", "",
             "Latency as a fraction of the dense model's. Table: the layers' savings times one scale fitted by least "
             "squares on four whole models; at half: the scale fitted on the model keeping about half of every group "
             "alone.", "",
             "| policy | MACs | measured | table | at half |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['policy']} | {r['macs']:.3f} | {r['measured']:.3f} | {r['table']:.3f} | "
                     f"{r['one_scale']:.3f} |")
    lines += ["", "| error (fraction of dense) | table | at half |", "|---|---|---|",
              f"| mean absolute | {np.mean(err['table']):.3f} | {np.mean(err['one_scale']):.3f} |",
              f"| largest | {np.max(err['table']):.3f} | {np.max(err['one_scale']):.3f} |"]
    common.write(name, summary, lines, results)


if __name__ == "__main__":
    main()
