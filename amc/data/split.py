"""The ONE held-out split: which TRAIN images become `val` (search rewards, fine-tuning selection).

The search measures rewards on `val`, fine-tuning keeps its best epoch on `val`, `amc eval --split val`
reports on it, and the embedded digits checkpoint is trained without it. All of them call
`split_train_val`, so they agree on the indices and no reward ever sees an image a model trained on.
"""

from __future__ import annotations

import torch

from amc.errors import AmcError


def default_val_size(n_train: int) -> int:
    """Validation images to hold out of a train split of `n_train` images: a fifth, at most 5,000."""
    return min(5000, n_train // 5)


def split_train_val(n_train: int, val_size: int | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices 0..n_train-1 into disjoint train and validation parts by a seeded permutation.

    Args:
        n_train: images in the TRAIN split.
        val_size: images to hold out as `val`; None: `default_val_size(n_train)`.
        seed: seed of the permutation.

    Returns:
        (train_idx, val_idx): int64 [n_train - val_size] and int64 [val_size], each sorted ascending.
        The same (n_train, val_size, seed) always gives the same split, on every machine.

    Raises:
        AmcError: `val_size` leaves no training image, or is empty.
    """
    if val_size is None:
        val_size = default_val_size(n_train)
    if val_size > n_train - 1:
        raise AmcError(
            f"validation size {val_size} leaves no training images: the train split has {n_train} images; "
            f"pass a smaller --val-size (at most {n_train - 1})"
        )
    if val_size < 1:
        raise AmcError(
            f"validation size {val_size} is empty (the train split has {n_train} images); "
            f"pass a --val-size between 1 and {n_train - 1}"
        )
    perm = torch.randperm(n_train, generator=torch.Generator().manual_seed(seed))
    return perm[val_size:].sort().values, perm[:val_size].sort().values
