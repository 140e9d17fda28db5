"""The embedded default: a digits CNN trained on the embedded 8x8 digits data, once, then cached.

No weights ship with amc and nothing downloads; training takes a few seconds on one CPU core and is
seeded, so every machine gets the same checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from amc.data.datasets import batches, load_dataset, resolve_cache_dir
from amc.data.split import split_train_val
from amc.errors import AmcError
from amc.fileio import atomic_torch_save
from amc.models import create_model

DIGITS_EPOCHS = 12


def digits_checkpoint(cache_dir: str | Path | None = None) -> Path:
    """Path of a trained `digits_cnn` checkpoint (`{"state_dict", "arch", "num_classes", "mean", "std"}`),
    trained with Adam for `DIGITS_EPOCHS` epochs on first use. It is trained on the train split minus the
    default held-out `val` part (seed 0), so search rewards on that part are honest."""
    path = resolve_cache_dir(cache_dir) / f"digits_cnn-e{DIGITS_EPOCHS}-heldout.pt"
    if path.exists():
        return path
    data = load_dataset("digits")
    train_idx, _ = split_train_val(len(data.train), seed=0)  # the default held-out split, as a search takes it
    torch.manual_seed(0)
    model = create_model("digits_cnn", data.num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(DIGITS_EPOCHS):
        for x, y in batches(data.train.subset(train_idx), 64, data.mean, data.std, shuffle=True, generator=generator):
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
    try:
        atomic_torch_save({"state_dict": model.state_dict(), "arch": "digits_cnn", "num_classes": data.num_classes,
                           "mean": list(data.mean), "std": list(data.std)}, path)
    except AmcError as exc:
        raise AmcError(f"{exc}, or set AMC_CACHE_DIR to a writable folder for amc's cache") from None
    return path
