"""Decoding image files into uint8 tensors (in a process pool for large folders), and the cache of decoded
tensors that spares a second decode (`AMC_CACHE_DIR`)."""

from __future__ import annotations

import multiprocessing
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from amc.errors import AmcError
from amc.fileio import atomic_torch_save

__all__ = ["decode_all", "decode_file", "read_cache", "resolve_cache_dir", "write_cache"]

# Below this many files a process pool costs more to start than it saves.
POOL_MIN_FILES = 2000
_PROGRESS_MIN_FILES = 5000


def resolve_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """The folder for amc's caches: `cache_dir`, else $AMC_CACHE_DIR, else ~/.cache/amc."""
    if cache_dir is None:
        cache_dir = os.environ.get("AMC_CACHE_DIR") or Path.home() / ".cache" / "amc"
    return Path(cache_dir).expanduser()


GRAY_MODES = ("1", "L", "LA")
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


def decode_file(path: str) -> np.ndarray | str:
    """One image file as uint8 [H, W, C] with its own channel count (1 for grayscale, 3 for colour), or the
    reason it cannot be decoded faithfully.

    Grayscale stays one channel; 16-bit grayscale is scaled to 8 bits (v / 257), where converting it to RGB
    would clip every pixel above 255 to white; palette, CMYK and alpha images become RGB (alpha dropped);
    32-bit float images are refused: their range is unknown.
    """
    try:
        with Image.open(path) as img:
            if img.mode in SIXTEEN_BIT_MODES or img.mode == "I":
                values = np.asarray(img).astype(np.int64)
                if values.min() < 0 or values.max() > 65535:
                    return f"its {img.mode} pixels lie outside 0..65535; save it as an 8- or 16-bit image"
                if img.mode == "I" and values.max() <= 255:  # 8-bit values held in 32-bit integers
                    return values.astype(np.uint8)[..., None]
                return np.rint(values / 257.0).astype(np.uint8)[..., None]
            if img.mode == "F":
                return "it holds 32-bit float pixels of unknown range; save it as an 8- or 16-bit image"
            if img.mode in GRAY_MODES:
                return np.asarray(img.convert("L"))[..., None]
            return np.asarray(img.convert("RGB"))
    except Exception as e:  # Pillow's plugins raise many types on bad files; all mean "unreadable"
        return f"{type(e).__name__}: {e}"


def decode_all(paths: list[str], decode: Callable[[str], np.ndarray | str] | None = None) -> torch.Tensor:
    """Decode every file, in order, into uint8 [N, C, H, W]; all must share the first image's size. C is 1
    when every image is grayscale, else 3 (grayscale images then repeat their channel).

    `decode` maps a path to uint8 [H, W, C] or the reason it cannot be read (default `decode_file`); it must be
    picklable (a module-level function or a partial of one): large folders are decoded in a process pool.

    Raises:
        AmcError: a file that does not decode, or whose size differs from the first's.
    """
    decode = decode or decode_file
    if len(paths) >= POOL_MIN_FILES and (os.cpu_count() or 1) > 1:
        pool = multiprocessing.Pool(os.cpu_count())
        decoded: Iterator[np.ndarray | str] = pool.imap(decode, paths, chunksize=256)
    else:
        pool = None
        decoded = map(decode, paths)
    arrays: list[np.ndarray] = []
    try:
        progress = tqdm(
            decoded, total=len(paths), desc="decoding images", unit="img", file=sys.stderr,
            disable=len(paths) <= _PROGRESS_MIN_FILES, leave=False,
        )  # fmt: skip
        for i, arr in enumerate(progress):
            if isinstance(arr, str):
                raise AmcError(f"cannot read image {paths[i]} faithfully ({arr}); delete or replace the file")
            if arrays and arr.shape[:2] != arrays[0].shape[:2]:
                h, w, ih, iw = *arrays[0].shape[:2], *arr.shape[:2]
                raise AmcError(
                    f"image {paths[i]} is {iw}x{ih} pixels but {paths[0]} is {w}x{h}; "
                    f"pass --image-size SIDE (e.g. 224) to read images of any size, or resize all images to {w}x{h} "
                    "(width x height)"
                )
            arrays.append(arr)
    finally:
        if pool is not None:
            pool.terminate()
    channels = max(a.shape[2] for a in arrays)  # _list_images guarantees at least one file
    out = np.empty((len(arrays), *arrays[0].shape[:2], channels), dtype=np.uint8)
    for i, arr in enumerate(arrays):
        out[i] = arr  # a grayscale image in a colour folder broadcasts to three equal channels
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def read_cache(cache_file: Path, key: str) -> dict | None:
    """The cached tensors if `cache_file` exists, is readable and matches `key`; otherwise None."""
    if not cache_file.is_file():
        return None
    try:
        cached = torch.load(cache_file, map_location="cpu", weights_only=True)
    except Exception:  # a truncated or foreign file is just a cache miss; it gets rewritten
        return None
    return cached if isinstance(cached, dict) and cached.get("key") == key else None


def write_cache(cache_file: Path, cached: dict) -> None:
    """Write atomically, so a concurrent reader (e.g. another DDP rank) never sees a partial file."""
    try:
        atomic_torch_save(cached, cache_file)
    except AmcError as e:
        # The data is already decoded; an unwritable cache only costs the next run another decode.
        warnings.warn(f"could not write image cache: {e}; or set AMC_CACHE_DIR to a writable folder", stacklevel=3)
