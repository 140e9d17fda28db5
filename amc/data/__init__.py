"""Data: datasets held in memory as uint8 tensors (`datasets`), per-batch transforms (`transforms`) and
the one held-out `val` split of TRAIN (`split`).

`DATASETS` names the data sets `load_dataset` reads; it lives here, free of heavy imports, so the command
line can offer it without loading torch.
"""

DATASETS: tuple[str, ...] = ("digits", "cifar10", "cifar100", "imagefolder", "synthetic")
