"""Fine-tuning (schedule, checkpoints, resume, distillation, DDP under torchrun) and atomic writes."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
from conftest import assert_one_line

import amc.data.datasets
import amc.train.finetune
from amc.data.datasets import ImageSet, load_dataset
from amc.data.split import default_val_size, split_train_val
from amc.errors import AmcError
from amc.fileio import atomic_path
from amc.models import create_model, load_checkpoint
from amc.train.finetune import FinetuneConfig, finetune, last_checkpoint_path

REPO = Path(__file__).resolve().parents[1]
# Digits trains in a few epochs at batch 64; the default lr 0.05 is for batch 128 on CIFAR.
FAST = FinetuneConfig(epochs=3, batch_size=64, lr=0.1)


@pytest.fixture(scope="module")
def digits() -> tuple[ImageSet, ImageSet, tuple[float, ...], tuple[float, ...]]:
    """(train, val, mean, std) of the digits train split: 1,150 / 287 images of 1x8x8."""
    ds = load_dataset("digits")
    train_idx, val_idx = split_train_val(len(ds.train), default_val_size(len(ds.train)))
    return ds.train.subset(train_idx), ds.train.subset(val_idx), ds.mean, ds.std


def fresh_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("digits_cnn")


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def trained(digits) -> tuple[nn.Module, amc.train.finetune.FinetuneResult]:
    """The digits CNN fine-tuned from random init with FAST."""
    model = fresh_model()
    return model, finetune(model, *digits, FAST, progress=False)


@pytest.fixture(scope="module")
def four_epochs(digits) -> tuple[nn.Module, amc.train.finetune.FinetuneResult]:
    """An uninterrupted 4-epoch run, the reference for the resume tests."""
    model = fresh_model()
    return model, finetune(model, *digits, FinetuneConfig(epochs=4, batch_size=64, lr=0.1), progress=False)


def test_digits_from_scratch_beats_80_percent(trained) -> None:
    _, result = trained
    assert result.last_val_accuracy > 0.8
    assert result.best_val_accuracy == max(h["val_accuracy"] for h in result.history) >= result.last_val_accuracy
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert result.history[result.best_epoch - 1]["val_accuracy"] == result.best_val_accuracy
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_schedule_warms_up_for_one_epoch_then_decays_to_zero(four_epochs) -> None:
    _, result = four_epochs
    lrs = [h["lr"] for h in result.history]
    assert lrs[0] == pytest.approx(0.1)  # the last warm-up step reaches the peak
    assert lrs[0] > lrs[1] > lrs[2] > lrs[3]
    assert lrs[3] < 0.01 * 0.1


def test_out_is_written_and_never_overwritten(digits, tmp_path: Path) -> None:
    out = tmp_path / "finetuned.pt"
    config = FinetuneConfig(epochs=1, batch_size=64, lr=0.1)
    model = fresh_model()
    finetune(model, *digits, config, out=out, progress=False)
    assert out.is_file() and last_checkpoint_path(out) == tmp_path / "finetuned.last.pt"
    assert last_checkpoint_path(out).is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    reloaded = create_model("digits_cnn")
    load_checkpoint(reloaded, out)
    assert same_weights(reloaded, model)  # one epoch: the best is the last

    state = torch.load(last_checkpoint_path(out), weights_only=True)
    decay, no_decay = state["optimizer"]["param_groups"]
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (5e-4, 0.0)
    one_dim = [p for p in model.parameters() if p.ndim == 1]  # BatchNorm scales/shifts and biases
    assert len(no_decay["params"]) == len(one_dim)

    with pytest.raises(AmcError, match="--resume"):
        finetune(fresh_model(), *digits, config, out=out, progress=False)
    out.unlink()  # the resume state alone still protects the run
    with pytest.raises(AmcError, match="already exists"):
        finetune(fresh_model(), *digits, config, out=out, progress=False)
    with pytest.raises(AmcError, match="does not exist"):
        finetune(fresh_model(), *digits, config, out=tmp_path / "other.pt", resume=True, progress=False)
    with pytest.raises(AmcError, match="--out"):
        finetune(fresh_model(), *digits, config, resume=True, progress=False)


class Killed(Exception):
    """Stands in for the process being killed."""


def test_resume_after_interruption_equals_uninterrupted_run(digits, four_epochs, tmp_path, monkeypatch) -> None:
    reference, expected = four_epochs
    out = tmp_path / "run.pt"
    config = FinetuneConfig(epochs=4, batch_size=64, lr=0.1)
    save_last = amc.train.finetune._save_last

    def killed_after_epoch_2(path, model, optimizer, history, *args, **kwargs):
        save_last(path, model, optimizer, history, *args, **kwargs)
        if len(history) == 2:
            raise Killed

    monkeypatch.setattr(amc.train.finetune, "_save_last", killed_after_epoch_2)
    with pytest.raises(Killed):
        finetune(fresh_model(), *digits, config, out=out, progress=False)
    monkeypatch.undo()

    # Resume into a model with other weights: everything must come from the checkpoint.
    model = fresh_model(seed=1)
    result = finetune(model, *digits, config, out=out, resume=True, progress=False)
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    # Every epoch reseeds its generators and the lr is a function of the step: CPU runs match bit for bit.
    assert same_weights(model, reference)
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in result.history]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"} for h in expected.history]
    assert (result.best_val_accuracy, result.best_epoch) == (expected.best_val_accuracy, expected.best_epoch)


def test_resume_with_more_epochs_extends_the_run(digits, four_epochs, tmp_path) -> None:
    reference, expected = four_epochs
    out = tmp_path / "run.pt"
    first = finetune(fresh_model(), *digits, FinetuneConfig(epochs=2, batch_size=64, lr=0.1), out=out, progress=False)
    model = fresh_model()
    result = finetune(model, *digits, FinetuneConfig(epochs=4, batch_size=64, lr=0.1), out=out, resume=True,
                      progress=False)  # fmt: skip
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    assert result.history[:2] == first.history
    # Epochs 3-4 follow the 4-epoch schedule, but epochs 1-2 ran on the 2-epoch cosine (lower lrs),
    # so the weights cannot equal the uninterrupted 4-epoch run's, not even approximately.
    assert [h["lr"] for h in result.history[2:]] == [h["lr"] for h in expected.history[2:]]
    assert not same_weights(model, reference)
    assert result.last_val_accuracy > 0.8

    with pytest.raises(AmcError, match="lr=0.1"):
        finetune(fresh_model(), *digits, FinetuneConfig(epochs=5, batch_size=64, lr=0.2), out=out, resume=True,
                 progress=False)  # fmt: skip
    with pytest.raises(AmcError, match="--epochs 4"):
        finetune(fresh_model(), *digits, FinetuneConfig(epochs=3, batch_size=64, lr=0.1), out=out, resume=True,
                 progress=False)  # fmt: skip


def test_distillation_changes_the_loss_and_leaves_the_teacher_alone(digits, trained) -> None:
    teacher = copy.deepcopy(trained[0])
    teacher_before = copy.deepcopy(teacher)
    plain = finetune(fresh_model(), *digits, FinetuneConfig(epochs=1, batch_size=64, lr=0.1), progress=False)
    config = FinetuneConfig(epochs=1, batch_size=64, lr=0.1, distill_alpha=0.5, temperature=4.0)
    distilled = finetune(fresh_model(), *digits, config, teacher=teacher, progress=False)
    loss_plain, loss_distilled = plain.history[0]["train_loss"], distilled.history[0]["train_loss"]
    assert torch.isfinite(torch.tensor(loss_distilled)) and loss_distilled != loss_plain
    assert distilled.last_val_accuracy > 0.5
    assert same_weights(teacher, teacher_before)
    with pytest.raises(AmcError, match="teacher"):
        finetune(fresh_model(), *digits, config, progress=False)


def test_augmentation_only_for_images_of_32_px_or_more(digits, monkeypatch) -> None:
    calls: list[tuple[int, ...]] = []
    real = amc.data.datasets.augment_crop_flip

    def recording(images: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
        calls.append(tuple(images.shape[1:]))
        return real(images, generator, padding)

    monkeypatch.setattr(amc.data.datasets, "augment_crop_flip", recording)
    config = FinetuneConfig(epochs=1, batch_size=64, lr=0.1)
    finetune(fresh_model(), *digits, config, progress=False)
    assert calls == []

    synthetic = load_dataset("synthetic")
    tiny = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.LazyLinear(10))
    tiny(torch.zeros(1, 3, 32, 32))  # materialize the lazy layer
    result = finetune(tiny, synthetic.train, synthetic.test, synthetic.mean, synthetic.std, config, progress=False)
    assert calls and set(calls) == {(3, 32, 32)}
    assert result.last_val_accuracy > 0.2  # 10 classes: well above chance after one epoch


def test_bad_settings_are_one_line_errors(digits) -> None:
    for config in (FinetuneConfig(epochs=0), FinetuneConfig(lr=0), FinetuneConfig(distill_alpha=2.0),
                   FinetuneConfig(device="tpu")):  # fmt: skip
        with pytest.raises(AmcError) as excinfo:
            finetune(fresh_model(), *digits, config, progress=False)
        assert_one_line(excinfo.value)


DDP_SCRIPT = textwrap.dedent(
    """
    import hashlib, json, os, sys
    from pathlib import Path

    import numpy as np
    import torch

    torch.set_num_threads(1)
    import amc.train.finetune as ft
    from amc.data.datasets import load_dataset
    from amc.data.split import default_val_size, split_train_val
    from amc.models import create_model

    out_dir, rank = Path(sys.argv[1]), int(os.environ["RANK"])
    seen = []
    real_batches = ft.batches

    def recording(data, batch_size, *args, **kwargs):
        for images, labels in real_batches(data, batch_size, *args, **kwargs):
            if kwargs.get("shuffle"):  # training batches, not validation
                seen.extend(hashlib.sha1(x.numpy().tobytes()).hexdigest() for x in images)
            yield images, labels

    ft.batches = recording
    ds = load_dataset("digits")
    # Drop duplicate images, so an image's bytes identify it.
    _, first = np.unique(ds.train.images.flatten(1).numpy(), axis=0, return_index=True)
    data = ds.train.subset(torch.from_numpy(np.sort(first)))
    train_idx, val_idx = split_train_val(len(data), default_val_size(len(data)))
    train, val = data.subset(train_idx), data.subset(val_idx)
    torch.manual_seed(0)
    model = create_model("digits_cnn")
    config = ft.FinetuneConfig(epochs=1, batch_size=64, lr=0.1)
    result = ft.finetune(model, train, val, ds.mean, ds.std, config, out=out_dir / "ddp.pt", progress=False)
    weights = hashlib.sha1(b"".join(t.numpy().tobytes() for t in model.state_dict().values())).hexdigest()
    record = {"seen": seen, "n_train": len(train), "val_accuracy": result.last_val_accuracy, "weights": weights}
    (out_dir / f"rank{rank}.json").write_text(json.dumps(record))
    """
)


@pytest.mark.slow
@pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with gloo unavailable"
)
def test_torchrun_two_processes_train_on_disjoint_shards(tmp_path: Path) -> None:
    script = tmp_path / "ddp_finetune.py"
    script.write_text(DDP_SCRIPT)
    python_path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": python_path}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", str(script)]
    proc = subprocess.run([*command, str(tmp_path)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    assert (tmp_path / "ddp.pt").is_file() and (tmp_path / "ddp.last.pt").is_file()
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    seen = [set(r["seen"]) for r in ranks]
    n_train = ranks[0]["n_train"]
    for r in ranks:
        assert len(r["seen"]) == len(set(r["seen"])) == n_train // 2  # every image of the shard once
    assert not seen[0] & seen[1]
    # Gradients are averaged and BatchNorm statistics come from rank 0: both ranks end identical.
    assert ranks[0]["weights"] == ranks[1]["weights"]
    assert ranks[0]["val_accuracy"] == ranks[1]["val_accuracy"] > 0.5
    reloaded = create_model("digits_cnn")
    load_checkpoint(reloaded, tmp_path / "ddp.pt")


def test_atomic_path_keeps_the_old_file_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]
