"""`amc profile`: the prunable channel groups of a model and their share of its MACs."""

from __future__ import annotations

import argparse

from amc.cli import command


@command(
    "profile", "the prunable channel groups of a model and their share of its MACs (needs only shapes)",
    shared=("model", "checkpoint", "dataset", "data_dir", "input_shape", "ignore"),
)
def run(args: argparse.Namespace) -> int:
    from amc.cli import common
    from amc.engine.cost import count_macs_params
    from amc.engine.groups import layer_names
    from amc.engine.pruner import ChannelPruner

    trained = common.trained_model(args.model, args.checkpoint, common.dataset(args.dataset, args.data_dir, args.image_size),
                                   args.input_shape)
    pruner = ChannelPruner(trained.module, trained.input_shape, ignored=layer_names(args.ignore))
    macs, params = count_macs_params(trained.module, trained.input_shape)
    groups = [
        {"name": g.name, "channels": g.width, "macs": int(share), "min_keep": g.min_keep * g.sections,
         "sections": g.sections, "consumer": g.consumer, "layers": g.layers, "residual_stream": g.residual_stream}
        for g, share in zip(pruner.groups, pruner.cost.group_macs())
    ]
    if args.json:
        common.print_json({"model": args.model, "input_shape": list(trained.input_shape), "macs": macs,
                           "params": params, "groups": groups})
        return 0
    width = max([len("group"), *(len(g["name"]) for g in groups)])
    print(f"{'group':<{width}}  {'channels':>8}  {'MACs %':>7}  {'min_keep':>8}  {'layers':>6}  refit consumer")
    for g in groups:
        sections = f"  (cut into {g['sections']} equal sections: keeps a multiple of {g['sections']})" \
            if g["sections"] > 1 else ""
        print(f"{g['name']:<{width}}  {g['channels']:>8}  {100 * g['macs'] / macs:>7.2f}  {g['min_keep']:>8}  "
              f"{len(g['layers']):>6}  {g['consumer'] or ('- (residual stream)' if g['residual_stream'] else '-')}"
              f"{sections}")
    print(f"\n{len(groups)} groups; dense model: {macs:,} MACs, {params:,} params, input {trained.input_shape}")
    print("MACs %: share of the dense MACs in the layers a group's channels come from or feed "
          "(a layer between two groups counts for both); min_keep: fewest channels a policy may keep (2 where a "
          "depthwise conv reads them); layers: the conv and Linear layers whose widths it sets (a residual stream "
          "sets every block's); refit consumer: the one layer re-fitted for the group (-: several readers, each "
          "re-fitted by the sequential re-fit)")
    return 0
