"""Per-batch image transforms in plain torch: normalization and CIFAR-style crop/flip augmentation.

Both work on whole uint8 batches on any device, so the training loop never touches PIL.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from amc.errors import AmcError


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Scale a uint8 batch to [0, 1] and standardize each channel.

    Args:
        images: uint8 [N, C, H, W], pixel values 0..255, on any device.
        mean: C per-channel means of the [0, 1]-scaled pixels.
        std: C per-channel standard deviations of the [0, 1]-scaled pixels.

    Returns:
        float32 [N, C, H, W] on the device of `images`: (images / 255 - mean) / std.
    """
    channels = images.shape[1]
    if len(mean) != channels or len(std) != channels:
        raise AmcError(
            f"normalization has {len(mean)} mean / {len(std)} std values but the images have {channels} "
            "channels; use a checkpoint trained on this dataset or pass matching mean/std"
        )
    m = torch.tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    return images.to(torch.float32).div_(255.0).sub_(m).div_(s)


def augment_crop_flip(images: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Standard CIFAR augmentation: zero-pad, random crop back to the input size, random horizontal flip.

    Every image gets its own crop offset (uniform in 0..2*padding on each axis) and its own flip
    (probability 0.5). The whole batch is done with one gather, no Python loop over images.

    Args:
        images: uint8 [N, C, H, W] on any device.
        generator: source of randomness; draws happen on `generator.device`, so a CPU generator
            gives the same augmentation whatever device the images are on.
        padding: zero border added on every side before cropping, in pixels; 0 means flip only.

    Returns:
        uint8 [N, C, H, W], same device as `images`.
    """
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    n, c, h, w = images.shape
    draw_device = generator.device
    # Three draws of fixed size per call, so ranks sharing a seed keep their generators in step.
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=draw_device).to(images.device)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=draw_device).to(images.device)
    flip = (torch.rand(n, generator=generator, device=draw_device) < 0.5).to(images.device)

    # Zero-filled buffer + slice copy: F.pad on uint8 is ~100x slower on CPU.
    hp, wp = h + 2 * padding, w + 2 * padding
    padded = images.new_zeros(n, c, hp, wp)
    padded[:, :, padding : padding + h, padding : padding + w] = images
    rows = dy[:, None] + torch.arange(h, device=images.device)  # [N, H]
    cols = dx[:, None] + torch.arange(w, device=images.device)  # [N, W]
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    # One gather over flattened pixels picks every image's crop for all channels at once.
    pixel = (rows[:, :, None] * wp + cols[:, None, :]).view(n, 1, h * w).expand(n, c, h * w)
    return padded.view(n, c, hp * wp).gather(2, pixel).view(n, c, h, w)


