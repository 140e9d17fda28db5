"""Image folders read from disk at one input size (`--image-size`): images of any size, and folders too large
to hold in memory (ImageNet's 1.28 million training images).

An `ImageFiles` split holds paths and labels only. Two transforms, both with Pillow, follow the ImageNet
recipe of torchvision's reference scripts:

- evaluation (`resize_centre_crop`): the shorter side resized to size / 0.875 (256 for 224), then the central
  size x size crop;
- training (`random_resized_crop` and a horizontal flip with probability 0.5): a crop of 8% to 100% of the
  area with aspect ratio 3/4 to 4/3, resized to size x size (Szegedy et al., "Going deeper with convolutions",
  CVPR 2015, section 6).

What a search reads many times (the reward split, the calibration and re-fit images, fine-tuning's val split)
is decoded once with the evaluation transform and cached as a uint8 tensor (`ImageFiles.load`). Training
batches stream: worker processes decode and augment whole batches while the model trains (`stream_batches`).
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from amc.data.decode import SIXTEEN_BIT_MODES, decode_all, decode_file, read_cache, resolve_cache_dir, write_cache
from amc.data.transforms import normalize
from amc.errors import AmcError

if TYPE_CHECKING:
    from amc.data.datasets import ImageSet

__all__ = ["EVAL_CROP_FRACTION", "ImageFiles", "default_workers", "random_resized_crop", "random_resized_crop_box",
           "resize_centre_crop",
           "stream_batches"]

# The centre crop covers this fraction of the resized shorter side: 224 of 256.
EVAL_CROP_FRACTION = 0.875
# Random-resized-crop ranges: the crop's share of the image area, and its aspect ratio (width / height).
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
_CACHE_FORMAT = 1


def default_workers() -> int:
    """Decoding worker processes by default: one core is left to training, at most 8 (0: decode in-process)."""
    return min(8, max(0, (os.cpu_count() or 1) - 1))


@dataclass
class ImageFiles:
    """A labelled split of image files, decoded on demand at `size` x `size` pixels, RGB.

    Attributes:
        paths: N image files.
        labels: int64 [N], class indices.
        size: the side of every decoded image, in pixels.
    """

    paths: list[str]
    labels: torch.Tensor
    size: int

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every decoded image: (3, size, size)."""
        return (3, self.size, self.size)

    def subset(self, idx: torch.Tensor) -> ImageFiles:
        """The files at int64 indices `idx` [M], as a new ImageFiles of M files."""
        return ImageFiles([self.paths[i] for i in idx.tolist()], self.labels[idx], self.size)

    def load(self, cache_dir: str | Path | None = None) -> ImageSet:
        """Every image decoded with the evaluation transform, as an in-memory ImageSet: uint8 [N, 3, size, size].

        Decoded once, in parallel, and cached in `cache_dir` (default $AMC_CACHE_DIR, else ~/.cache/amc) under a key
        of the size and every file's path, byte size and modification time, so a changed file is decoded again.
        Meant for the few thousand images a search or a validation reads repeatedly, not a whole ImageNet.

        Raises:
            AmcError: an image that does not decode.
        """
        from amc.data.datasets import ImageSet  # datasets imports this module

        if not self.paths:  # e.g. --select-size 0: an empty split, nothing to decode or cache
            return ImageSet(torch.empty(0, 3, self.size, self.size, dtype=torch.uint8), self.labels.clone())
        key = hashlib.sha256(f"{_CACHE_FORMAT}\n{self.size}\n".encode())
        for path in self.paths:
            st = os.stat(path)
            key.update(f"{os.path.abspath(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        digest = key.hexdigest()
        cache_file = resolve_cache_dir(cache_dir) / f"imagefiles-{digest[:16]}.pt"
        cached = read_cache(cache_file, digest)
        if cached is None:
            images = decode_all(self.paths, functools.partial(_decode_eval, size=self.size))
            cached = {"key": digest, "images": images}
            write_cache(cache_file, cached)
        return ImageSet(cached["images"], self.labels.clone())


def resize_centre_crop(img: Image.Image, size: int) -> Image.Image:
    """The evaluation transform: shorter side to round(size / EVAL_CROP_FRACTION), then the central size x size
    crop, in one bilinear (antialiased) resampling of the crop's box. Returns a size x size image."""
    w, h = img.size
    side = min(w, h) * size / round(size / EVAL_CROP_FRACTION)  # the crop's side, in source pixels
    left, top = (w - side) / 2, (h - side) / 2
    return img.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + side, top + side))


def random_resized_crop_box(width: int, height: int, rng: random.Random) -> tuple[int, int, int, int]:
    """A random crop box (left, top, crop width, crop height) in pixels of a width x height image: CROP_SCALE of
    the area, aspect ratio (width / height) in CROP_RATIO, drawn as torchvision's RandomResizedCrop draws it (ten
    tries at a box that fits, then the central crop of the image clamped to the ratio range)."""
    area = width * height
    log_ratio = (math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]))
    for _ in range(10):
        target = area * rng.uniform(*CROP_SCALE)
        aspect = math.exp(rng.uniform(*log_ratio))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= width and 0 < ch <= height:
            return rng.randint(0, width - cw), rng.randint(0, height - ch), cw, ch
    ratio = width / height
    if ratio < CROP_RATIO[0]:
        cw, ch = width, round(width / CROP_RATIO[0])
    elif ratio > CROP_RATIO[1]:
        cw, ch = round(height * CROP_RATIO[1]), height
    else:
        cw, ch = width, height
    return (width - cw) // 2, (height - ch) // 2, cw, ch


def random_resized_crop(img: Image.Image, size: int, rng: random.Random) -> Image.Image:
    """The training crop: a `random_resized_crop_box` of `img` resized to size x size (bilinear, antialiased)."""
    left, top, cw, ch = random_resized_crop_box(*img.size, rng)
    return img.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + cw, top + ch))


def _open_rgb(path: str, draft: int | None = None) -> Image.Image | str:
    """The image at `path` as RGB, or the reason it cannot be decoded faithfully. `draft` lets a JPEG decode at a
    reduced scale whose shorter side is still at least `draft` pixels (far faster for large photos)."""
    try:
        with Image.open(path) as img:
            if img.mode in (*SIXTEEN_BIT_MODES, "I", "F"):  # the in-memory folders' rules for deep pixels
                arr = decode_file(path)
                if isinstance(arr, str):
                    return arr
                return Image.fromarray(arr[..., 0]).convert("RGB")
            if draft is not None and img.format == "JPEG":
                w, h = img.size
                scale = draft / min(w, h)
                img.draft("RGB", (math.ceil(w * scale), math.ceil(h * scale)))
            return img.convert("RGB")
    except Exception as e:  # Pillow's plugins raise many types on bad files; all mean "unreadable"
        return f"{type(e).__name__}: {e}"


def _decode_eval(path: str, size: int) -> np.ndarray | str:
    """One file through the evaluation transform: uint8 [size, size, 3], or the reason it cannot be read."""
    img = _open_rgb(path, draft=round(size / EVAL_CROP_FRACTION))
    return img if isinstance(img, str) else np.asarray(resize_centre_crop(img, size))


class _BatchDecoder(torch.utils.data.Dataset):
    """Item k is batch k, decoded whole (one task per worker and batch): (uint8 [B, 3, S, S], int64 [B], None),
    or (None, None, message) when a file cannot be read, so that the error reaches the user as one line."""

    def __init__(self, files: ImageFiles, chunks: list[torch.Tensor], seeds: list[int] | None) -> None:
        self.files, self.chunks, self.seeds = files, chunks, seeds

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, k: int) -> tuple[torch.Tensor | None, torch.Tensor | None, str | None]:
        idx, size = self.chunks[k], self.files.size
        rng = random.Random(self.seeds[k]) if self.seeds is not None else None
        out = np.empty((len(idx), size, size, 3), dtype=np.uint8)
        for row, i in enumerate(idx.tolist()):
            path = self.files.paths[i]
            if rng is None:
                arr = _decode_eval(path, size)
            else:
                img = _open_rgb(path)
                if isinstance(img, str):
                    arr = img
                else:
                    img = random_resized_crop(img, size, rng)
                    if rng.random() < 0.5:
                        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
                    arr = np.asarray(img)
            if isinstance(arr, str):
                return None, None, f"cannot read image {path} faithfully ({arr}); delete or replace the file"
            out[row] = arr
        return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous(), self.files.labels[idx], None


def stream_batches(
    files: ImageFiles,
    order: torch.Tensor,
    batch_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    augment: bool = False,
    generator: torch.Generator | None = None,
    workers: int | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Decode `files` in the order `order` (int64 indices), `batch_size` at a time, in worker processes.

    With `augment` each image gets the training transform, drawn from one seed per batch taken from `generator`
    (one draw per pass, whatever the number of workers: the same seed gives the same batches); without it, the
    evaluation transform. `workers` processes decode ahead of the consumer (None: `default_workers()`; 0: in this
    process).

    Yields:
        (images, labels): float32 [B, 3, S, S] normalized with `mean`, `std`, and int64 [B], on the CPU.

    Raises:
        AmcError: a file that cannot be decoded (named).
    """
    chunks = list(order.split(batch_size))
    seeds = None
    if augment:
        if generator is None:
            raise ValueError("augment needs a generator")
        seeds = torch.randint(0, 2**62, (len(chunks),), generator=generator, device=generator.device).tolist()
    workers = default_workers() if workers is None else workers
    loader = torch.utils.data.DataLoader(
        _BatchDecoder(files, chunks, seeds), batch_size=None, shuffle=False, num_workers=workers,
        prefetch_factor=2 if workers else None, persistent_workers=False,
    )  # fmt: skip
    for images, labels, error in loader:
        if error is not None:
            raise AmcError(error)
        yield normalize(images, mean, std), labels
