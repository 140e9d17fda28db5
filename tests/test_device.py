"""Devices and the fast reward: every tensor where the user asked, no silent CPU fallback, reduced precision
and racing that agree with the full float32 evaluation where the README says they do."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import assert_user_error

from agents.config import SearchConfig
from amc.apply import apply_policy
from amc.cli import main
from amc.engine.budget import Budget, ratio_counts
from amc.engine.device import fast_dtype, resolve_device
from amc.errors import AmcError
from amc.models.zoo import digits_checkpoint
from amc.policy import Policy
from amc.reward import RacingReward, RewardEvaluator, prepare_task

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def random_counts(pruner, n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [np.array([rng.integers(max(1, c // 4), c + 1) for c in pruner.channels]) for _ in range(n)]


@pytest.mark.parametrize("device", DEVICES)
def test_the_pipeline_keeps_every_tensor_on_its_device(device):
    task = prepare_task("digits_cnn", digits_checkpoint(), "digits", device=device)
    want = torch.device(device).type
    evaluator = task.evaluator
    assert {t.device.type for t in (evaluator.val_x, evaluator.val_y, evaluator.refit_x)} == {want}
    assert {t.positions.device.type for t in evaluator.targets.values()} <= {want}
    assert {g.device.type for g in task.pruner.grams.values()} == {want}
    counts = ratio_counts(task.pruner, 0.5)
    for module in (evaluator.prune(counts), evaluator.inference_model(counts)):
        assert {p.device.type for p in [*module.parameters(), *module.buffers()]} == {want}
    policy = Policy.from_counts(task.pruner, "digits_cnn", counts, Budget("flops", 0.5))
    pruned = apply_policy(task, policy)
    assert {p.device.type for p in pruned.module.parameters()} == {want}
    assert 0.5 < evaluator(counts).accuracy <= 1.0


def test_auto_is_cuda_when_present_else_cpu_and_a_missing_gpu_is_refused():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(AmcError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(AmcError, match="CUDA is not available"):
        prepare_task("digits_cnn", digits_checkpoint(), "digits", device="cuda:0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("argv", [
    ["train-agent", "--episodes", "2", "--warmup", "1"],
    ["eval", "--model", "digits_cnn", "--dataset", "digits"],
    ["baseline", "--model", "digits_cnn", "--target-flops", "0.5"],
    ["apply", "--model", "digits_cnn", "--dataset", "digits", "--policy", "p.json"],
    ["finetune", "--model", "m.pt", "--dataset", "digits"],
], ids=lambda argv: argv[0])
def test_device_cuda_without_a_gpu_exits_2_with_one_line(argv, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = [] if argv[0] == "eval" else ["--out", str(tmp_path / "out")]
    code = main([*argv, *out, "--device", "cuda"])
    assert_user_error(code, capsys.readouterr().err, "CUDA is not available", "--device cpu")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", [0, "cuda:00", "cuda:-1", " cpu"])
def test_only_documented_device_names_are_taken(name):
    with pytest.raises(AmcError, match="unknown device"):
        resolve_device(name)
    with pytest.raises(AmcError, match="unknown device"):
        SearchConfig(device=name).check()


def test_a_device_that_is_not_one_is_refused_when_parsed(capsys):
    code = main(["eval", "--model", "digits_cnn", "--dataset", "digits", "--device", "gpu"])
    assert_user_error(code, capsys.readouterr().err, "'gpu' is not a device")


def test_the_reward_pass_is_the_pruned_model_with_batchnorm_folded(digits_task):
    evaluator = digits_task.evaluator
    counts = ratio_counts(digits_task.pruner, 0.5)
    x = evaluator.val_x[:64]
    with torch.no_grad():
        torch.testing.assert_close(evaluator.inference_model(counts)(x), evaluator.prune(counts)(x),
                                   rtol=1e-4, atol=1e-4)


def test_bfloat16_reward_agrees_with_float32(digits_task):
    """The README's claim for reduced precision, on the embedded model: the accuracies of the same policies in
    bfloat16 and float32 differ by at most 1 point (287 val images: 3 images)."""
    task = digits_task
    full = RewardEvaluator(task.pruner, task.evaluator.val_x, task.evaluator.val_y, refit_x=task.evaluator.refit_x,
                           dtype=torch.float32)
    half = RewardEvaluator(task.pruner, task.evaluator.val_x, task.evaluator.val_y, refit_x=task.evaluator.refit_x,
                           dtype=torch.bfloat16)
    for counts in random_counts(task.pruner, 6):
        assert abs(full(counts).accuracy - half(counts).accuracy) <= 0.01


def test_fast_dtype_is_bfloat16_only_where_the_hardware_has_it():
    native = any(getattr(torch.cpu, probe, lambda: False)() for probe in ("_is_avx512_bf16_supported",
                                                                           "_is_amx_tile_supported"))
    assert fast_dtype(torch.device("cpu")) == (torch.bfloat16 if native else torch.float32)


def test_racing_scores_promising_policies_on_all_of_val_and_never_crowns_an_estimate(digits_task):
    """A policy scored on all of val gets exactly the full evaluation's accuracy; one stopped early gets an
    estimate below the leader's full accuracy by more than the margin, so the best is always a full score."""
    evaluator = digits_task.evaluator
    racing = RacingReward(evaluator, first=100, margin=0.01)
    n = len(evaluator.val_y)
    best = -1.0
    for counts in random_counts(digits_task.pruner, 24, seed=1):
        result = racing(counts)
        if result.images == n:
            assert result.accuracy == evaluator(counts).accuracy
            best = max(best, result.accuracy)
        else:
            assert result.images == 100
            assert result.accuracy < racing.leader[1] - 0.01
            model = evaluator.inference_model(counts)  # what the log's val_accuracy shows: measured, not estimated
            assert result.measured == evaluator.score(model, 0, 100)[0] / 100
        assert racing.leader[1] == best
    assert 0 < racing.full < racing.total == 24


def test_racing_estimates_track_the_full_accuracy(digits_task):
    """A stopped policy's estimate (the leader's accuracy plus the paired difference on the first images) is
    close to its accuracy on all of val: within 3 points on average on the embedded model."""
    evaluator = digits_task.evaluator
    racing = RacingReward(evaluator, first=100, margin=0.0)
    errors = []
    for counts in random_counts(digits_task.pruner, 20, seed=2):
        result = racing(counts)
        if result.images < len(evaluator.val_y):
            errors.append(abs(result.accuracy - evaluator(counts).accuracy))
    assert errors and np.mean(errors) < 0.03
