"""Data: datasets held in memory as uint8 tensors (`datasets`), image folders read from disk at one size
(`imagefiles`), decoding and its cache (`decode`), per-batch transforms (`transforms`) and the one held-out `val`
split of TRAIN (`split`).

`DATASETS` names the data sets `load_dataset` reads; it lives here, free of heavy imports, so the command
line can offer it without loading torch.
"""

DATASETS: tuple[str, ...] = ("digits", "cifar10", "cifar100", "imagefolder", "synthetic")


def load_dataset(*args, **kwargs):  # noqa: ANN002, ANN003
    """`amc.data.datasets.load_dataset`, at the package for convenience (torch loads on the first call)."""
    from amc.data.datasets import load_dataset as load

    return load(*args, **kwargs)
