"""Datasets as in-memory uint8 tensors or as image files read on demand, train/validation splits, and sharded
mini-batches.

Most datasets are held whole in memory as uint8 [N, C, H, W] (CIFAR-10 is 180 MB), so the training loop is
plain tensor indexing with no DataLoader workers. Image folders are decoded once and cached as a tensor file;
with `image_size` an image folder is instead read from disk at one size, for images of any size and folders
too large for memory (`amc.data.imagefiles`). See `load_dataset`.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from amc.data import DATASETS
from amc.data.decode import decode_all, read_cache, resolve_cache_dir, write_cache
from amc.data.imagefiles import ImageFiles, stream_batches
from amc.data.transforms import augment_crop_flip, normalize
from amc.errors import AmcError

__all__ = [
    "DATASETS",
    "Dataset",
    "ImageFiles",
    "ImageSet",
    "batches",
    "load_dataset",
    "load_labelled_folder",
]

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

# Bump when the decoded layout changes, so old cache files are re-decoded instead of misread.
_CACHE_FORMAT = 2  # 2: grayscale folders keep one channel, 16-bit gray is scaled



@dataclass
class ImageSet:
    """A labelled set of images.

    Attributes:
        images: uint8 [N, C, H, W], pixel values 0..255.
        labels: int64 [N], class indices 0..num_classes-1.
    """

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image."""
        c, h, w = self.images.shape[1:]
        return (c, h, w)

    def subset(self, idx: torch.Tensor) -> ImageSet:
        """The images at int64 indices `idx` [M], as a new ImageSet of M images (copies)."""
        return ImageSet(self.images[idx], self.labels[idx])

    def load(self, cache_dir: str | Path | None = None) -> ImageSet:
        """The images in memory: this set itself (as `ImageFiles.load` decodes files)."""
        return self


Split = ImageSet | ImageFiles  # a split in memory, or read from files on demand


@dataclass
class Dataset:
    """A train/test pair plus what a model needs to consume it.

    Attributes:
        name: one of DATASETS.
        train, test: the two splits, in memory (ImageSet) or, for an image folder read at `--image-size`, as files
            (ImageFiles; `split.subset(idx).load()` decodes a part); a validation split is carved out of `train`
            by the caller.
        classes: class names; label i is classes[i].
        mean, std: per-channel statistics of pixels scaled to [0, 1], for `normalize`.
    """

    name: str
    train: Split
    test: Split
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image."""
        return self.train.shape


def load_dataset(name: str, data_dir: str | Path | None = None, *, cache_dir: str | Path | None = None,
                 image_size: int | None = None) -> Dataset:
    """Load a dataset: whole into memory, or (an image folder with `image_size`) as files read on demand.

    Args:
        name: one of DATASETS. `digits` and `synthetic` need no files; the others need `data_dir`.
        data_dir: for `cifar10`/`cifar100` the folder of python-pickle batches or its parent;
            for `imagefolder` a folder holding train/<class>/* and test/<class>/*.
        cache_dir: where `imagefolder` keeps decoded tensors; default $AMC_CACHE_DIR, else ~/.cache/amc.
        image_size: `imagefolder` only: read images of any size as RGB at image_size x image_size pixels (the
            ImageNet evaluation and training transforms of `amc.data.imagefiles`), decoding on demand; None holds
            the folder in memory at its images' own (common) size.

    Raises:
        AmcError: unknown name, missing data_dir, `image_size` with another dataset or below 8, or data that is
            missing or malformed.
    """
    if name not in DATASETS:
        raise AmcError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if image_size is not None:
        if name != "imagefolder":
            raise AmcError(f"--image-size applies to imagefolder data; {name} has images of a fixed size: drop it")
        if not (isinstance(image_size, int) and image_size >= 8):
            raise AmcError(f"--image-size {image_size} is too small; pass a side in pixels of at least 8 (e.g. 224)")
    if name == "digits":
        return _load_digits()
    if name == "synthetic":
        return _load_synthetic()
    if data_dir is None:
        raise AmcError(f"dataset {name} needs its files; pass --data-dir pointing at them")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise AmcError(f"data folder {root} does not exist or is not a folder; pass an existing --data-dir")
    if name == "imagefolder" and image_size is not None:
        return _imagefolder_files(root, image_size)
    if name == "imagefolder":
        return _load_imagefolder(root, resolve_cache_dir(cache_dir))
    return _load_cifar(name, root)


def batches(
    data: Split,
    batch_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    shuffle: bool = False,
    augment: bool = False,
    generator: torch.Generator | None = None,
    rank: int = 0,
    world_size: int = 1,
    workers: int | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Iterate over `data` in normalized mini-batches.

    With world_size > 1 the (shuffled) order is cut to a multiple of world_size and rank r takes
    positions r, r + world_size, ...: shards are disjoint, equally long, and so give every rank the
    same number of batches of the same sizes, which keeps DDP collectives in step. Up to
    world_size - 1 images are skipped per pass; with world_size = 1 every image is used once.

    Args:
        data: images to iterate over.
        batch_size: images per batch; the last batch may be smaller.
        mean, std: per-channel statistics for `normalize`.
        shuffle: visit images in an order drawn from `generator`.
        augment: apply `augment_crop_flip` to images in memory, the random-resized crop and flip of
            `amc.data.imagefiles` to files (drawing from `generator`).
        generator: required when shuffling or augmenting. Under DDP seed it identically on every
            rank: all ranks then draw the same permutation and consume the same number of draws.
        rank, world_size: this process's shard.
        workers: decoding processes for files (`stream_batches`; None: `default_workers()`); unused in memory.

    Yields:
        (images, labels): float32 [B, C, H, W] and int64 [B], on the device of `data` (files: the CPU).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in 0..world_size-1, got rank={rank}, world_size={world_size}")
    if (shuffle or augment) and generator is None:
        raise ValueError("shuffle and augment need a generator, seeded the same on every rank")
    n = len(data)
    device = data.images.device if isinstance(data, ImageSet) else torch.device("cpu")
    if shuffle:
        order = torch.randperm(n, generator=generator, device=generator.device).to(device)
    else:
        order = torch.arange(n, device=device)
    shard = order[: n - n % world_size][rank::world_size]
    if isinstance(data, ImageFiles):
        yield from stream_batches(data, shard, batch_size, mean, std, augment=augment, generator=generator,
                                  workers=workers)
        return
    for start in range(0, len(shard), batch_size):
        idx = shard[start : start + batch_size]
        images = data.images[idx]
        if augment:
            images = augment_crop_flip(images, generator)
        yield normalize(images, mean, std), data.labels[idx]


def _channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 [N, C, H, W] images scaled to [0, 1], rounded to 4 decimals."""
    x = images.to(torch.float64).div_(255.0).transpose(0, 1).reshape(images.shape[1], -1)
    mean = tuple(round(v, 4) for v in x.mean(dim=1).tolist())
    std = tuple(round(v, 4) for v in x.std(dim=1, unbiased=False).tolist())
    return mean, std


def _load_digits() -> Dataset:
    """sklearn's 1,797 8x8 handwritten digits: uint8 [N, 1, 8, 8]; a fixed seeded split, 360 test images."""
    from sklearn.datasets import load_digits  # sklearn is slow to import and only this dataset needs it

    raw = load_digits()
    # sklearn stores ink as 0..16; map to the full uint8 range so all datasets share one scale.
    images = torch.from_numpy(np.rint(raw.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(raw.target.astype(np.int64))
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    train_idx, test_idx = perm[:-360].sort().values, perm[-360:].sort().values
    train = ImageSet(images[train_idx], labels[train_idx])
    mean, std = _channel_stats(train.images)
    return Dataset("digits", train, ImageSet(images[test_idx], labels[test_idx]), [str(d) for d in range(10)], mean, std)


def _load_synthetic(n_train: int = 512, n_test: int = 256, num_classes: int = 10) -> Dataset:
    """Deterministic learnable toy data: uint8 [N, 3, 32, 32], one smooth random pattern per class plus noise."""
    g = torch.Generator().manual_seed(0)
    # Upsampling a 4x4 grid makes the patterns low-frequency, so they survive crop/flip augmentation.
    coarse = torch.randn(num_classes, 3, 4, 4, generator=g)
    patterns = torch.nn.functional.interpolate(coarse, size=(32, 32), mode="bilinear", align_corners=False)

    def make(n: int) -> ImageSet:
        labels = torch.arange(n) % num_classes
        labels = labels[torch.randperm(n, generator=g)]
        pixels = 128.0 + 60.0 * patterns[labels] + 20.0 * torch.randn(n, 3, 32, 32, generator=g)
        return ImageSet(pixels.round().clamp(0, 255).to(torch.uint8), labels)

    train, test = make(n_train), make(n_test)
    mean, std = _channel_stats(train.images)
    return Dataset("synthetic", train, test, [f"class{i}" for i in range(num_classes)], mean, std)


def _load_cifar(name: str, root: Path) -> Dataset:
    """CIFAR-10/100 from the python-pickle release (the files of cifar-10-python.tar.gz / cifar-100-python.tar.gz).

    The pickles are unpickled, so load only files you trust.
    """
    if name == "cifar10":
        subfolder, marker = "cifar-10-batches-py", "data_batch_1"
        train_files = [f"data_batch_{i}" for i in range(1, 6)]
        test_file, meta_file, label_key, names_key = "test_batch", "batches.meta", b"labels", b"label_names"
        mean, std = CIFAR10_MEAN, CIFAR10_STD
    else:
        subfolder, marker = "cifar-100-python", "train"
        train_files = ["train"]
        test_file, meta_file, label_key, names_key = "test", "meta", b"fine_labels", b"fine_label_names"
        mean, std = CIFAR100_MEAN, CIFAR100_STD
    folder = next((d for d in (root, root / subfolder) if (d / marker).is_file()), None)
    if folder is None:
        raise AmcError(
            f"no {name} batches in {root}: expected {root}/{marker} or {root}/{subfolder}/{marker}; "
            f"pass --data-dir pointing at the extracted python version of {name}"
        )

    def split(files: list[str]) -> ImageSet:
        parts = [_unpickle(folder / f) for f in files]
        data = np.concatenate([p[b"data"] for p in parts]).astype(np.uint8, copy=False)
        labels = np.concatenate([np.asarray(p[label_key], dtype=np.int64) for p in parts])
        return ImageSet(torch.from_numpy(data.reshape(-1, 3, 32, 32)), torch.from_numpy(labels))

    classes = [c.decode() if isinstance(c, bytes) else str(c) for c in _unpickle(folder / meta_file)[names_key]]
    return Dataset(name, split(train_files), split([test_file]), classes, mean, std)


def _unpickle(path: Path) -> dict:
    """One CIFAR pickle file as its dict with bytes keys."""
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="bytes")
    except FileNotFoundError:
        raise AmcError(f"CIFAR file {path} is missing; re-extract the dataset archive into {path.parent}") from None
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise AmcError(f"CIFAR file {path} is corrupt ({e}); re-extract the dataset archive") from None


_ImageFile = tuple[Path, int, os.stat_result]  # (path, label, stat)


def _list_images(root: Path) -> tuple[list[str], list[_ImageFile], list[_ImageFile]]:
    """Walk root/train/<class>/ and root/test/<class>/ for image files, skipping hidden ones.

    Returns:
        (classes, train_files, test_files): the sorted names of train's class folders, and each
        split's files in a reproducible order (by class, then by path).
    """
    layout = f"expected {root}/train/<class>/*.jpg and {root}/test/<class>/*.jpg"
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise AmcError(f"data folder {root} has no {split}/ folder; {layout}")
    classes = _subfolders(root / "train")
    listed: list[list[_ImageFile]] = []
    for split in ("train", "test"):
        split_dir = root / split
        split_classes = _subfolders(split_dir)
        if not split_classes:
            raise AmcError(f"data folder {split_dir} has no class folders; {layout}")
        files: list[_ImageFile] = []
        for cls in split_classes:
            if cls not in classes:
                raise AmcError(
                    f"class folder {split_dir / cls} has no counterpart in {root / 'train'}; "
                    "add training images for it or remove it"
                )
            found = _image_files(split_dir / cls)
            label = classes.index(cls)
            files.extend((Path(e.path), label, e.stat()) for e in found)
        listed.append(files)
    return classes, listed[0], listed[1]


def _subfolders(folder: Path) -> list[str]:
    """Sorted names of the non-hidden folders directly in `folder`."""
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


@functools.cache
def _image_extensions() -> frozenset[str]:
    """The file extensions Pillow opens (lower case, with the dot)."""
    from PIL import Image

    Image.init()
    return frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


def _image_files(folder: Path) -> list[os.DirEntry]:
    """The image files of a class folder (`_walk_files`), chosen by extension as torchvision's ImageFolder does: the
    extensions Pillow opens. Other files (a readme.txt, a labels.csv) are skipped with a warning.

    Raises:
        AmcError: the folder holds no image file.
    """
    images, others = [], []
    for entry in _walk_files(folder):
        (images if os.path.splitext(entry.name)[1].lower() in _image_extensions() else others).append(entry)
    if not images:
        raise AmcError(f"class folder {folder} has no images (image files by extension: .jpg, .png, ...); add images "
                       "or remove the folder")
    if others:
        warnings.warn(f"skipped {len(others)} file(s) of {folder} that are not images by their extension "
                      f"(e.g. {others[0].name})")
    return images


def _walk_files(folder: Path, seen: set[tuple[int, int]] | None = None) -> list[os.DirEntry]:
    """All non-hidden files under `folder`, recursively, sorted by path so labels and order are reproducible.
    Symlinked folders are followed once each, so a link loop cannot recurse without end."""
    seen = set() if seen is None else seen
    out: list[os.DirEntry] = []
    try:
        info = folder.stat()
        if (info.st_dev, info.st_ino) in seen:
            return out
        seen.add((info.st_dev, info.st_ino))
        entries = list(os.scandir(folder))
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                out.extend(_walk_files(Path(entry.path), seen))
            elif entry.is_file():
                out.append(entry)
    except OSError as exc:  # a broken link, a folder we may not read
        raise AmcError(f"cannot read image folder {folder} ({exc.strerror or exc}); fix the folder or its links") from None
    return sorted(out, key=lambda e: e.path)

def _load_imagefolder(root: Path, cache_dir: Path) -> Dataset:
    """An ImageFolder tree decoded once, then loaded from a cache file in `cache_dir`.

    One cache file per data folder (named by a hash of its absolute path); inside, a key hashes the
    absolute path and every file's (relative path, size, mtime), so any change re-decodes.
    """
    root = root.resolve()
    classes, train_files, test_files = _list_images(root)
    files, n_train = train_files + test_files, len(train_files)
    key = hashlib.sha256(f"{_CACHE_FORMAT}\n{root}\n".encode())
    for path, _, st in files:
        key.update(f"{path.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    cache_file = cache_dir / f"imagefolder-{hashlib.sha256(str(root).encode()).hexdigest()[:16]}.pt"

    cached = read_cache(cache_file, key.hexdigest())
    if cached is None:
        labels = torch.tensor([label for _, label, _ in files], dtype=torch.int64)
        images = decode_all([str(path) for path, _, _ in files])
        cached = {
            "key": key.hexdigest(),
            "classes": classes,
            "train_images": images[:n_train],
            "train_labels": labels[:n_train],
            "test_images": images[n_train:],
            "test_labels": labels[n_train:],
        }
        write_cache(cache_file, cached)
    train = ImageSet(cached["train_images"], cached["train_labels"])
    test = ImageSet(cached["test_images"], cached["test_labels"])
    if train.images.shape[1] == 3:  # colour photos: the usual ImageNet statistics
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:  # grayscale: the folder's own statistics, one value per channel
        mean, std = _channel_stats(train.images)
    return Dataset("imagefolder", train, test, list(cached["classes"]), mean, std)


def _imagefolder_files(root: Path, size: int) -> Dataset:
    """An ImageFolder tree as files read on demand at size x size, RGB, normalized with ImageNet's statistics."""
    classes, train_files, test_files = _list_images(root.resolve())

    def split(files: list[_ImageFile]) -> ImageFiles:
        return ImageFiles([str(path) for path, _, _ in files],
                          torch.tensor([label for _, label, _ in files], dtype=torch.int64), size)

    return Dataset("imagefolder", split(train_files), split(test_files), classes, IMAGENET_MEAN, IMAGENET_STD)


def load_labelled_folder(folder: str | Path, classes: Sequence[str], *, cache_dir: str | Path | None = None,
                         image_size: int | None = None) -> ImageSet:
    """Images of one split in class folders, `folder/<class>/*`, labelled by `classes` (the dataset's class
    names: a folder named `classes[i]` holds images of label i; a dataset may have classes the folder lacks).
    Decoded once and cached like `imagefolder` (`AMC_CACHE_DIR`); with `image_size`, images of any size pass the
    evaluation transform of `amc.data.imagefiles` (RGB, image_size x image_size). Used for a user's own
    validation images (`amc train-agent --reward-data`).

    Returns:
        ImageSet: uint8 [N, C, H, W] images, int64 [N] labels, ordered by class, then by path.

    Raises:
        AmcError: the folder is missing or has no class folders, a class folder is not among `classes`, is
            empty, or holds an image that does not decode or differs in size from the others.
    """
    root = Path(folder).expanduser().resolve()
    if not root.is_dir():
        raise AmcError(f"image folder {root} does not exist or is not a folder; pass a folder of <class>/ folders")
    found = _subfolders(root)
    if not found:
        raise AmcError(f"image folder {root} has no class folders; expected {root}/<class>/*.jpg")
    unknown = [c for c in found if c not in classes]
    if unknown:
        raise AmcError(f"class folder {root / unknown[0]} is not a class of the dataset ({', '.join(list(classes)[:10])}"
                       f"{', ...' if len(classes) > 10 else ''}); rename or remove it")
    files: list[_ImageFile] = []
    for cls in found:
        entries = _image_files(root / cls)
        files.extend((Path(e.path), list(classes).index(cls), e.stat()) for e in entries)
    labels = torch.tensor([label for _, label, _ in files], dtype=torch.int64)
    if image_size is not None:
        return ImageFiles([str(path) for path, _, _ in files], labels, image_size).load(cache_dir)
    key = hashlib.sha256(f"{_CACHE_FORMAT}\nsplit\n{root}\n".encode())
    for path, label, st in files:
        key.update(f"{path.relative_to(root)}\0{label}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    cache_file = resolve_cache_dir(cache_dir) / f"imagesplit-{hashlib.sha256(str(root).encode()).hexdigest()[:16]}.pt"
    cached = read_cache(cache_file, key.hexdigest())
    if cached is None:
        cached = {"key": key.hexdigest(), "images": decode_all([str(path) for path, _, _ in files]), "labels": labels}
        write_cache(cache_file, cached)
    return ImageSet(cached["images"], cached["labels"])


