"""Tests for amc.data: dataset loading, the image-folder cache, splits, augmentation and batching.

Everything runs on tiny generated data under tmp_path; nothing needs the real datasets.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import amc.data.datasets as data
import amc.data.decode as decode
from amc.data.datasets import DATASETS, ImageSet, batches, load_dataset
from amc.data.split import default_val_size, split_train_val
from amc.data.transforms import augment_crop_flip, normalize
from amc.errors import AmcError


def _pixels(seed: int, size: tuple[int, int] = (6, 5)) -> np.ndarray:
    """Random uint8 RGB pixels [H, W, 3] for an image of size (width, height)."""
    w, h = size
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _make_folder(root: Path, size: tuple[int, int] = (6, 5)) -> dict[str, np.ndarray]:
    """Write root/{train,test}/{cat,dog}/ with a mix of PNG and JPEG; returns the PNGs' pixels by relative path."""
    pngs: dict[str, np.ndarray] = {}
    seed = 0
    for split, per_class in (("train", 3), ("test", 2)):
        for cls in ("dog", "cat"):  # written out of order: classes must come back sorted
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(per_class):
                seed += 1
                pixels = _pixels(seed, size)
                if i % 2 == 0:
                    Image.fromarray(pixels).save(folder / f"{i}.png")
                    pngs[f"{split}/{cls}/{i}.png"] = pixels
                else:
                    Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=95)
    return pngs


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "imgs"
    _make_folder(root)
    return root


def _load(root: Path, tmp_path: Path) -> data.Dataset:
    return load_dataset("imagefolder", root, cache_dir=tmp_path / "cache")


def test_digits_shapes_and_deterministic_split() -> None:
    a, b = load_dataset("digits"), load_dataset("digits")
    assert a.train.images.shape == (1437, 1, 8, 8) and a.test.images.shape == (360, 1, 8, 8)
    assert a.train.images.dtype == torch.uint8 and a.train.labels.dtype == torch.int64
    assert a.image_shape == (1, 8, 8) and a.num_classes == 10 and a.classes == [str(d) for d in range(10)]
    assert int(a.train.images.max()) == 255 and int(a.train.images.min()) == 0
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
    assert 0.0 < a.mean[0] < 1.0 and 0.0 < a.std[0] < 1.0 and a.mean[0] == round(a.mean[0], 4)
    expected = a.train.images.double().div(255)
    assert a.mean[0] == pytest.approx(expected.mean().item(), abs=1e-4)


def test_split_train_val_deterministic_disjoint_covering() -> None:
    train, val = split_train_val(1000, 200, seed=3)
    train2, val2 = split_train_val(1000, 200, seed=3)
    assert torch.equal(train, train2) and torch.equal(val, val2)
    assert len(train) == 800 and len(val) == 200 and train.dtype == torch.int64
    assert torch.equal(torch.cat([train, val]).sort().values, torch.arange(1000))
    assert torch.equal(train, train.sort().values) and torch.equal(val, val.sort().values)
    assert not torch.equal(val, split_train_val(1000, 200, seed=4)[1])
    assert default_val_size(50000) == 5000 and default_val_size(1437) == 287


@pytest.mark.parametrize("val_size", [1000, 5000, 0])
def test_split_train_val_rejects_bad_size(val_size: int) -> None:
    with pytest.raises(AmcError, match=r"1000 images.*--val-size"):
        split_train_val(1000, val_size)


def test_imagefolder_loads(folder: Path, tmp_path: Path) -> None:
    pngs = _make_folder(tmp_path / "again")  # same seeds as `folder`, for expected pixels
    ds = _load(folder, tmp_path)
    assert ds.classes == ["cat", "dog"] and ds.image_shape == (3, 5, 6)
    assert len(ds.train) == 6 and len(ds.test) == 4
    assert ds.train.labels.tolist() == [0, 0, 0, 1, 1, 1] and ds.test.labels.tolist() == [0, 0, 1, 1]
    assert ds.mean == data.IMAGENET_MEAN and ds.std == data.IMAGENET_STD
    # Files are sorted within a class: 0.png, 1.jpg, 2.png.
    expected = torch.from_numpy(pngs["train/dog/2.png"]).permute(2, 0, 1)
    assert torch.equal(ds.train.images[5], expected)
    assert torch.equal(ds.test.images[0], torch.from_numpy(pngs["test/cat/0.png"]).permute(2, 0, 1))


def test_imagefolder_cache_hit_and_invalidation(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = _load(folder, tmp_path)
    assert len(list((tmp_path / "cache").glob("imagefolder-*.pt"))) == 1

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded although the cache is valid")

    with monkeypatch.context() as m:
        m.setattr(decode, "decode_file", no_decoding)
        m.setattr(Image, "open", no_decoding)
        second = _load(folder, tmp_path)
    assert torch.equal(first.train.images, second.train.images) and first.classes == second.classes

    changed = folder / "train" / "cat" / "0.png"
    Image.fromarray(np.zeros((5, 6, 3), dtype=np.uint8)).save(changed)
    st = changed.stat()
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # coarse-mtime filesystems
    third = _load(folder, tmp_path)
    assert int(third.train.images[0].max()) == 0
    assert len(list((tmp_path / "cache").glob("*"))) == 1  # one file per folder, no temp leftovers


def test_imagefolder_default_cache_dir_from_env(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMC_CACHE_DIR", str(tmp_path / "envcache"))
    load_dataset("imagefolder", folder)
    assert len(list((tmp_path / "envcache").glob("imagefolder-*.pt"))) == 1


def test_imagefolder_process_pool_matches_serial(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    serial = _load(folder, tmp_path / "a")
    monkeypatch.setattr(decode, "POOL_MIN_FILES", 1)
    pooled = _load(folder, tmp_path / "b")
    assert torch.equal(serial.train.images, pooled.train.images)
    assert torch.equal(serial.test.images, pooled.test.images)


def test_imagefolder_wrong_size(folder: Path, tmp_path: Path) -> None:
    Image.fromarray(_pixels(99, (7, 5))).save(folder / "test" / "dog" / "big.png")
    with pytest.raises(AmcError, match=r"big\.png is 7x5 .* 6x5.*resize"):
        _load(folder, tmp_path)


def test_imagefolder_corrupt_image(folder: Path, tmp_path: Path) -> None:
    (folder / "train" / "dog" / "broken.jpg").write_bytes(b"this is not a jpeg")
    with pytest.raises(AmcError, match=r"broken\.jpg"):
        _load(folder, tmp_path)


def test_imagefolder_missing_or_empty_folders(tmp_path: Path) -> None:
    with pytest.raises(AmcError, match="does not exist"):
        _load(tmp_path / "nowhere", tmp_path)
    root = tmp_path / "imgs"
    (root / "train").mkdir(parents=True)
    with pytest.raises(AmcError, match=r"no test/ folder"):
        _load(root, tmp_path)
    (root / "test").mkdir()
    with pytest.raises(AmcError, match="no class folders"):
        _load(root, tmp_path)
    (root / "train" / "cat").mkdir()
    (root / "test" / "cat").mkdir()
    (root / "train" / "cat" / "README.txt").write_text("not an image")  # read by extension, as torchvision does
    with pytest.raises(AmcError, match=r"cat has no images"):
        _load(root, tmp_path)
    Image.fromarray(_pixels(1)).save(root / "train" / "cat" / "a.png")
    Image.fromarray(_pixels(2)).save(root / "test" / "cat" / "a.png")
    with pytest.warns(UserWarning, match=r"skipped 1 file\(s\) of .*cat that are not images .*README.txt"):
        assert len(_load(root, tmp_path).train) == 1
    (root / "test" / "cow").mkdir()
    Image.fromarray(_pixels(3)).save(root / "test" / "cow" / "a.png")
    with pytest.raises(AmcError, match=r"cow has no counterpart"):
        _load(root, tmp_path)


def _write_pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


@pytest.mark.parametrize("nested", [False, True])
def test_cifar10_pickles(tmp_path: Path, nested: bool) -> None:
    folder = tmp_path / "cifar-10-batches-py" if nested else tmp_path
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    rows = rng.integers(0, 256, (23, 3072), dtype=np.uint8)
    labels = rng.integers(0, 10, 23).tolist()
    for i in range(5):
        _write_pickle(folder / f"data_batch_{i + 1}", {b"data": rows[4 * i : 4 * i + 4], b"labels": labels[4 * i : 4 * i + 4]})
    _write_pickle(folder / "test_batch", {b"data": rows[20:], b"labels": labels[20:]})
    names = [f"c{i}".encode() for i in range(10)]
    _write_pickle(folder / "batches.meta", {b"label_names": names})
    ds = load_dataset("cifar10", tmp_path)
    assert ds.image_shape == (3, 32, 32) and len(ds.train) == 20 and len(ds.test) == 3
    assert ds.classes == [f"c{i}" for i in range(10)] and ds.train.labels.dtype == torch.int64
    assert ds.train.labels.tolist() == labels[:20] and ds.mean == data.CIFAR10_MEAN
    # Rows hold the red plane, then green, then blue, each row-major.
    assert int(ds.train.images[0, 1, 0, 1]) == int(rows[0, 1024 + 1])
    assert torch.equal(ds.test.images[2].reshape(-1), torch.from_numpy(rows[22]))


def test_cifar100_pickles(tmp_path: Path) -> None:
    rows = np.arange(2 * 3072).reshape(2, 3072).astype(np.uint8)
    _write_pickle(tmp_path / "train", {b"data": rows, b"fine_labels": [5, 99]})
    _write_pickle(tmp_path / "test", {b"data": rows[:1], b"fine_labels": [7]})
    _write_pickle(tmp_path / "meta", {b"fine_label_names": [f"f{i}".encode() for i in range(100)]})
    ds = load_dataset("cifar100", tmp_path)
    assert ds.num_classes == 100 and ds.train.labels.tolist() == [5, 99] and ds.test.labels.tolist() == [7]


def test_cifar_missing_batches(tmp_path: Path) -> None:
    with pytest.raises(AmcError, match=r"no cifar10 batches .*--data-dir"):
        load_dataset("cifar10", tmp_path)


def test_unknown_name_and_missing_data_dir() -> None:
    with pytest.raises(AmcError, match=", ".join(DATASETS)):
        load_dataset("mnist")
    with pytest.raises(AmcError, match="--data-dir"):
        load_dataset("imagefolder")


def test_synthetic_is_deterministic() -> None:
    a, b = load_dataset("synthetic"), load_dataset("synthetic", "/ignored")
    assert a.image_shape == (3, 32, 32) and a.num_classes == 10
    assert len(a.train) == 512 and len(a.test) == 256
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
    assert torch.equal(a.train.labels.bincount(), torch.full((10,), 51) + (torch.arange(10) < 2))


def test_imageset_subset() -> None:
    s = ImageSet(torch.arange(5, dtype=torch.uint8).view(5, 1, 1, 1), torch.arange(5))
    sub = s.subset(torch.tensor([4, 1]))
    assert len(sub) == 2 and sub.labels.tolist() == [4, 1] and sub.images.flatten().tolist() == [4, 1]


def test_normalize_values() -> None:
    images = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 1, 1, 3).repeat(1, 2, 1, 1)
    out = normalize(images, (0.5, 0.0), (0.5, 2.0))
    assert out.dtype == torch.float32 and out.shape == (1, 2, 1, 3)
    assert torch.allclose(out[0, 0, 0], torch.tensor([-1.0, -0.6, 1.0]))
    assert torch.allclose(out[0, 1, 0], torch.tensor([0.0, 0.1, 0.5]))
    with pytest.raises(AmcError, match="3 mean"):
        normalize(images, (0.5,) * 3, (0.5,) * 3)


def test_augment_flip_only_permutes_columns() -> None:
    images = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = augment_crop_flip(images, torch.Generator().manual_seed(1), padding=0)
    flipped = [torch.equal(o, i.flip(-1)) for o, i in zip(out, images)]
    kept = [torch.equal(o, i) for o, i in zip(out, images)]
    assert all(f or k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)


def test_augment_is_a_padded_crop() -> None:
    images = torch.randint(1, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = augment_crop_flip(images, torch.Generator().manual_seed(1))
    again = augment_crop_flip(images, torch.Generator().manual_seed(1))
    assert out.shape == images.shape and out.dtype == torch.uint8 and torch.equal(out, again)
    padded = torch.zeros(16, 3, 40, 40, dtype=torch.uint8)
    padded[:, :, 4:36, 4:36] = images
    for o, p in zip(out, padded):
        crops = [p[:, y : y + 32, x : x + 32] for y in range(9) for x in range(9)]
        assert any(torch.equal(o, c) or torch.equal(o, c.flip(-1)) for c in crops)
    assert (out == 0).any()  # some image was shifted into the zero border


def test_batches_sharded_across_ranks() -> None:
    s = ImageSet(torch.zeros(103, 1, 2, 2, dtype=torch.uint8), torch.arange(103))
    shards = []
    for rank in range(2):
        g = torch.Generator().manual_seed(7)  # the same seed on every rank
        out = list(batches(s, 10, (0.5,), (0.5,), shuffle=True, augment=True, generator=g, rank=rank, world_size=2))
        assert all(x.dtype == torch.float32 and x.shape[1:] == (1, 2, 2) and y.dtype == torch.int64 for x, y in out)
        shards.append([y for _, y in out])
    assert [len(y) for y in shards[0]] == [len(y) for y in shards[1]] == [10] * 5 + [1]
    a, b = torch.cat(shards[0]), torch.cat(shards[1])
    assert len(set(a.tolist()) | set(b.tolist())) == 102 and not set(a.tolist()) & set(b.tolist())


def test_batches_single_process_covers_everything_in_order() -> None:
    s = ImageSet(torch.full((23, 1, 1, 1), 255, dtype=torch.uint8), torch.arange(23))
    out = list(batches(s, 10, (0.0,), (1.0,)))
    assert [len(y) for _, y in out] == [10, 10, 3]
    assert torch.equal(torch.cat([y for _, y in out]), torch.arange(23))
    assert torch.equal(out[0][0], torch.ones(10, 1, 1, 1))


def _save_folder(root: Path, images: dict[str, list]) -> None:
    """train/ and test/ class folders holding the given PIL images (each class gets them all)."""
    for split in ("train", "test"):
        for cls, imgs in images.items():
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i, img in enumerate(imgs):
                img.save(root / split / cls / f"{i}.png")


def test_grayscale_folders_keep_one_channel_and_16_bit_gray_is_scaled(tmp_path: Path) -> None:
    from PIL import Image

    gray8 = Image.fromarray(np.full((6, 6), 100, dtype=np.uint8), mode="L")
    gray16 = Image.fromarray(np.full((6, 6), 60000, dtype=np.uint16))
    assert gray16.mode.startswith("I")
    _save_folder(tmp_path / "gray", {"a": [gray8], "b": [gray16]})
    ds = load_dataset("imagefolder", tmp_path / "gray", cache_dir=tmp_path / "cache")
    assert ds.image_shape == (1, 6, 6) and len(ds.mean) == 1  # a 1-channel model takes it as it is
    by_class = {c: ds.train.images[ds.train.labels == i].double().mean().item() for i, c in enumerate(ds.classes)}
    assert by_class["a"] == 100 and by_class["b"] == 233  # 60000 / 257, where an RGB conversion gives 255

    half16 = Image.fromarray(np.full((6, 6), 128 * 257, dtype=np.uint16))
    rgb = Image.fromarray(np.full((6, 6, 3), (10, 20, 30), dtype=np.uint8), mode="RGB")
    _save_folder(tmp_path / "mixed", {"a": [half16], "b": [rgb]})
    ds = load_dataset("imagefolder", tmp_path / "mixed", cache_dir=tmp_path / "cache")
    assert ds.image_shape == (3, 6, 6)  # colour folder: gray images repeat their channel
    a = ds.train.images[ds.train.labels == ds.classes.index("a")]
    assert a.unique().tolist() == [128]  # 16-bit mid-gray decodes to mid-gray, not white


def test_float_images_are_refused(tmp_path: Path) -> None:
    from PIL import Image

    for split in ("train", "test"):
        (tmp_path / "f" / split / "a").mkdir(parents=True)
        Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32), mode="F").save(tmp_path / "f" / split / "a" / "0.tif")
    with pytest.raises(AmcError, match="float pixels"):
        load_dataset("imagefolder", tmp_path / "f", cache_dir=tmp_path / "cache")
