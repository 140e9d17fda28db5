"""Image folders read from disk at one size (`--image-size`): transforms, the cached decode, streaming batches,
and the commands that take them."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import amc.data.decode as decode
from amc.cli import main
from amc.data.datasets import Dataset, ImageFiles, ImageSet, batches, load_dataset, load_labelled_folder
from amc.data.imagefiles import random_resized_crop_box, resize_centre_crop, stream_batches
from amc.data.transforms import normalize
from amc.errors import AmcError
from amc.models.registry import create_model
from amc.reward import split_accuracy
from amc.train.config import FinetuneConfig
from amc.train.finetune import finetune

SIZE = 24


def _photo(seed: int, size: tuple[int, int]) -> np.ndarray:
    """A smooth random colour picture, uint8 [H, W, 3] for size (W, H)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 4, 4, generator=g) * 255
    up = torch.nn.functional.interpolate(coarse, size=(size[1], size[0]), mode="bilinear", align_corners=False)
    return up[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """train/ and test/ with two classes of images of many sizes and kinds (JPEG, PNG, grayscale, RGBA)."""
    root = tmp_path / "data"
    sizes = [(40, 30), (31, 57), (64, 64), (100, 45), (27, 27), (52, 38)]
    for split, n in (("train", 12), ("test", 4)):
        for label, cls in enumerate(("cat", "dog")):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                pixels = _photo(100 * label + i + (50 if split == "test" else 0), sizes[i % len(sizes)])
                img = Image.fromarray(pixels)
                if i % 4 == 1:
                    img = img.convert("L")
                elif i % 4 == 2:
                    img = img.convert("RGBA")
                img.save(root / split / cls / f"{i}.{'jpg' if i % 4 == 0 else 'png'}")
    return root


def _dataset(folder: Path, tmp_path: Path) -> Dataset:
    return load_dataset("imagefolder", folder, cache_dir=tmp_path / "cache", image_size=SIZE)


def test_any_sizes_read_as_files_at_image_size(folder: Path, tmp_path: Path) -> None:
    data = _dataset(folder, tmp_path)
    assert isinstance(data.train, ImageFiles) and isinstance(data.test, ImageFiles)
    assert data.image_shape == (3, SIZE, SIZE) and data.classes == ["cat", "dog"]
    assert len(data.train) == 24 and len(data.test) == 8
    assert data.train.labels.tolist() == [0] * 12 + [1] * 12
    part = data.train.subset(torch.tensor([0, 13, 5]))
    loaded = part.load(tmp_path / "cache")
    assert isinstance(loaded, ImageSet) and loaded.images.dtype == torch.uint8
    assert loaded.images.shape == (3, 3, SIZE, SIZE) and loaded.labels.tolist() == [0, 1, 0]
    # the grayscale file (index 13 is dog/1.png) repeats its one channel
    assert torch.equal(loaded.images[1, 0], loaded.images[1, 1])


def test_same_size_folder_without_image_size_is_refused_with_the_fix(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(AmcError, match=r"--image-size"):
        load_dataset("imagefolder", folder, cache_dir=tmp_path / "cache")


def test_image_size_refused_where_it_cannot_apply(folder: Path) -> None:
    with pytest.raises(AmcError, match="imagefolder"):
        load_dataset("digits", image_size=32)
    with pytest.raises(AmcError, match="at least 8"):
        load_dataset("imagefolder", folder, image_size=4)


def test_decoded_once_then_read_from_the_cache(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _dataset(folder, tmp_path)
    first = data.train.load(tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("imagefiles-*.pt"))) == 1

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded although the cache is valid")

    with monkeypatch.context() as m:
        m.setattr(Image, "open", no_decoding)
        second = data.train.load(tmp_path / "cache")
    assert torch.equal(first.images, second.images)
    # a changed file is decoded again
    Image.fromarray(np.zeros((30, 40, 3), dtype=np.uint8)).save(folder / "train" / "cat" / "1.png")
    third = data.train.load(tmp_path / "cache")
    assert int(third.images[1].max()) == 0 and torch.equal(third.images[2:], first.images[2:])


def test_reward_folder_of_any_sizes_at_image_size(folder: Path, tmp_path: Path) -> None:
    held = load_labelled_folder(folder / "test", ["bird", "cat", "dog"], cache_dir=tmp_path / "cache", image_size=SIZE)
    assert held.images.shape == (8, 3, SIZE, SIZE) and held.labels.tolist() == [1] * 4 + [2] * 4


def test_pool_decode_matches_serial(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _dataset(folder, tmp_path)
    serial = data.train.load(tmp_path / "a")
    monkeypatch.setattr(decode, "POOL_MIN_FILES", 1)
    assert torch.equal(serial.images, data.train.load(tmp_path / "b").images)


def test_centre_crop_keeps_the_centre_and_matches_resize_then_crop() -> None:
    # 64 wide, 32 high: outer quarters red and blue, the middle half green
    pixels = np.zeros((32, 64, 3), dtype=np.uint8)
    pixels[:, :16, 0], pixels[:, 16:48, 1], pixels[:, 48:, 2] = 255, 255, 255
    img = Image.fromarray(pixels)
    out = np.asarray(resize_centre_crop(img, 16))
    assert out.shape == (16, 16, 3)
    assert (out[..., 1] == 255).all() and (out[..., 0] == 0).all() and (out[..., 2] == 0).all()
    # the usual two steps: shorter side to 16 / 0.875 = 18 (round), then the central 16 x 16
    photo = Image.fromarray(_photo(3, (64, 32)))
    two_step = np.asarray(photo.resize((36, 18), Image.Resampling.BILINEAR).crop((10, 1, 26, 17))).astype(int)
    one_step = np.asarray(resize_centre_crop(photo, 16)).astype(int)
    assert np.abs(two_step - one_step).mean() < 2.0


@pytest.mark.parametrize("width,height", [(500, 375), (64, 64), (20, 300), (300, 20)])
def test_random_resized_crop_boxes_are_in_range(width: int, height: int) -> None:
    rng = random.Random(0)
    for _ in range(300):
        left, top, cw, ch = random_resized_crop_box(width, height, rng)
        assert 0 <= left and 0 <= top and left + cw <= width and top + ch <= height and cw > 0 and ch > 0
        if (cw, ch) != (width, height) and min(width, height) >= 64 and max(width, height) / min(width, height) < 4:
            assert 0.08 * 0.9 <= cw * ch / (width * height) <= 1.0
            assert 0.75 * 0.9 <= cw / ch <= 4 / 3 * 1.1
    # a very elongated image falls back to its central crop clamped to the ratio range
    left, top, cw, ch = random_resized_crop_box(300, 20, random.Random(1))
    assert ch == 20 and cw == round(20 * 4 / 3) and left == (300 - cw) // 2


def test_streamed_training_batches_do_not_depend_on_workers(folder: Path, tmp_path: Path) -> None:
    data = _dataset(folder, tmp_path)
    mean, std = data.mean, data.std

    def epoch(workers: int) -> list[torch.Tensor]:
        g = torch.Generator().manual_seed(7)
        return [x for x, _ in batches(data.train, 5, mean, std, shuffle=True, augment=True, generator=g,
                                      workers=workers)]

    serial, parallel = epoch(0), epoch(2)
    assert [x.shape for x in serial] == [(5, 3, SIZE, SIZE)] * 4 + [(4, 3, SIZE, SIZE)]
    assert all(torch.equal(a, b) for a, b in zip(serial, parallel))
    other = [x for x, _ in batches(data.train, 5, mean, std, shuffle=True, augment=True,
                                   generator=torch.Generator().manual_seed(8), workers=0)]
    assert not torch.equal(torch.cat(serial), torch.cat(other))  # the crops depend on the seed


def test_streamed_evaluation_equals_the_cached_decode(folder: Path, tmp_path: Path) -> None:
    data = _dataset(folder, tmp_path)
    streamed = torch.cat([x for x, _ in batches(data.test, 3, data.mean, data.std, workers=1)])
    cached = normalize(data.test.load(tmp_path / "cache").images, data.mean, data.std)
    assert torch.equal(streamed, cached)


def test_shards_of_files_are_disjoint_and_cover_the_split(folder: Path, tmp_path: Path) -> None:
    data = _dataset(folder, tmp_path)
    marked = ImageFiles(data.train.paths, torch.arange(len(data.train)), SIZE)  # labels name the images
    seen = []
    for rank in range(3):
        g = torch.Generator().manual_seed(0)
        seen.append(torch.cat([y for _, y in batches(marked, 4, data.mean, data.std, shuffle=True, generator=g,
                                                     rank=rank, world_size=3, workers=0)]))
    assert sum(len(s) for s in seen) == 24 and len(set(torch.cat(seen).tolist())) == 24


def test_an_unreadable_file_is_one_line_naming_it(folder: Path, tmp_path: Path) -> None:
    bad = folder / "train" / "dog" / "broken.jpg"
    bad.write_bytes(b"not an image")
    data = _dataset(folder, tmp_path)
    with pytest.raises(AmcError, match=r"broken\.jpg") as info:
        list(stream_batches(data.train, torch.arange(len(data.train)), 8, data.mean, data.std, workers=1))
    assert "\n" not in str(info.value)
    with pytest.raises(AmcError, match=r"broken\.jpg"):
        data.train.load(tmp_path / "cache")


def test_split_accuracy_streams_the_same_as_in_memory(folder: Path, tmp_path: Path) -> None:
    data = _dataset(folder, tmp_path)
    model = create_model("resnet20", num_classes=2).eval()
    streamed = split_accuracy(model, data.test, data.mean, data.std, batch_size=3)
    in_memory = split_accuracy(model, data.test.load(tmp_path / "cache"), data.mean, data.std)
    assert streamed[0] == in_memory[0] and math.isclose(streamed[1], in_memory[1], rel_tol=1e-5)


def test_finetune_streams_files_and_the_workers_do_not_change_the_weights(folder: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMC_CACHE_DIR", str(tmp_path / "cache"))
    data = _dataset(folder, tmp_path)
    train, val = data.train.subset(torch.arange(0, 24, 2)), data.train.subset(torch.arange(1, 24, 2))
    weights = []
    for workers in (0, 2):
        torch.manual_seed(0)
        model = create_model("resnet20", num_classes=2)
        config = FinetuneConfig(epochs=2, batch_size=4, seed=0, num_threads=1, workers=workers, device="cpu")
        result = finetune(model, train, val, data.mean, data.std, config, progress=False)
        assert len(result.history) == 2 and 0.0 <= result.best_val_accuracy <= 1.0
        weights.append(model.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_cli_eval_takes_image_size(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("AMC_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["eval", "--model", "resnet20", "--dataset", "imagefolder", "--data-dir", str(folder),
                 "--image-size", str(SIZE), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 8 and 0.0 <= report["accuracy"] <= 1.0
    assert main(["eval", "--model", "resnet20", "--dataset", "imagefolder", "--data-dir", str(folder)]) == 2
    assert "--image-size" in capsys.readouterr().err
    assert main(["eval", "--model", "resnet20", "--dataset", "imagefolder", "--data-dir", str(folder),
                 "--image-size", "0"]) == 2


def test_a_search_task_decodes_only_what_it_reads(folder: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from amc.reward import prepare_task

    monkeypatch.setenv("AMC_CACHE_DIR", str(tmp_path / "cache"))
    task = prepare_task("resnet20", None, "imagefolder", folder, image_size=SIZE, val_size=6, calib_size=8,
                        refit_size=4, select_size=4)
    assert task.evaluator.val_x.shape == (6, 3, SIZE, SIZE)
    assert task.settings["image_size"] == SIZE
    assert isinstance(task.dataset.train, ImageFiles)  # the rest of TRAIN stays on disk
    assert 0.0 <= task.test_accuracy(task.pruner.model) <= 1.0
    # the reward, selection, calibration and re-fit images: four cached decodes of 6, 3 (a fifth of the 18 TRAIN
    # images left), 8 and 4 images
    cached = [torch.load(f, weights_only=True)["images"] for f in (tmp_path / "cache").glob("imagefiles-*.pt")]
    assert sorted(len(c) for c in cached) == [3, 4, 6, 8]


@pytest.mark.parametrize("empty", ["select_size", "refit_size"])
def test_a_split_set_to_zero_images_is_empty_not_an_error(folder: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch, empty: str) -> None:
    from amc.reward import prepare_task

    monkeypatch.setenv("AMC_CACHE_DIR", str(tmp_path / "cache"))
    sizes = dict(val_size=6, calib_size=8, refit_size=4, select_size=4) | {empty: 0}
    task = prepare_task("resnet20", None, "imagefolder", folder, image_size=SIZE, **sizes)
    assert task.evaluator.has_selection == (empty != "select_size")
    assert 0.0 <= task.evaluator(task.pruner.channels // 2).accuracy <= 1.0
    assert len(ImageFiles([], torch.empty(0, dtype=torch.int64), SIZE).load().images) == 0
