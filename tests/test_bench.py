"""The benchmark scripts under bench/: every one starts (`--help`), and bench/finetune.py writes fine-tuned
models as amc model files that `amc.load_model` opens, on the embedded digits data."""

from __future__ import annotations

import functools
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from amc.models import create_model

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
# the runnable benchmarks: every file with a command line (common.py and model files are modules)
SCRIPTS = sorted(p.name for p in BENCH.glob("*.py") if "__main__" in p.read_text())


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch):
    """Imports a bench script as the command line runs it (bench/ first on sys.path, beside `common`); the
    modules are dropped again afterwards."""
    monkeypatch.syspath_prepend(str(BENCH))
    names = ["common"]

    def load(script: str):
        names.append(script)
        return importlib.import_module(script)

    yield load
    for name in names:
        sys.modules.pop(name, None)


def test_scripts_found() -> None:
    assert {"baselines.py", "finetune.py", "latency.py", "reconstruction.py", "reward_vs_test.py",
            "search.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script: str) -> None:
    done = subprocess.run([sys.executable, str(BENCH / script), "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"usage: bench/{script}" in done.stdout


@pytest.mark.slow
def test_finetune_writes_amc_model_files(bench, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import amc
    from amc.data.datasets import load_dataset
    from amc.data.transforms import normalize
    from amc.engine.budget import Budget, uniform_counts
    from amc.engine.measure import accuracy
    from amc.engine.pruner import ChannelPruner
    from amc.models.pruned import PrunedModel
    from amc.models.trained import load_trained_model
    from amc.models.zoo import digits_checkpoint
    from amc.policy import Policy

    finetune = bench("finetune")
    common = sys.modules["common"]
    # latency is not what this test checks: one short round per setting instead of 7 of 0.2 s
    monkeypatch.setattr(common, "latencies", functools.partial(common.latencies, repeats=1, min_run_time=0.01))

    # the uniform policy `amc baseline --method uniform --target-flops 0.5` writes for the digits CNN
    data = load_dataset("digits")
    checkpoint = digits_checkpoint()
    trained = load_trained_model("digits_cnn", checkpoint, dataset=data)
    pruner = ChannelPruner(trained.module, trained.input_shape)
    budget = Budget("flops", 0.5)
    counts = uniform_counts(pruner, pruner.cost.macs, budget.ratio * pruner.cost.macs(pruner.channels))
    policy_file = tmp_path / "uniform.json"
    Policy.from_counts(pruner, "digits_cnn", counts, budget, method="uniform", lbound=0.0).save(policy_file)

    work, results = tmp_path / "work", tmp_path / "results"
    args = finetune.parse_args(["--model", "digits_cnn", "--checkpoint", str(checkpoint), "--dataset", "digits",
                                "--policy", f"uniform={policy_file}", "--epochs", "1", "--threads", "1",
                                "--work", str(work)])
    summary, (pruned,) = finetune.run(args, results)

    report = json.loads((results / "finetune_digits_cnn.json").read_text())
    assert report["benchmark"] == "finetune" and report["command"].startswith("python bench/finetune.py --model")
    assert [r["policy"] for r in report["rows"]] == ["dense", "uniform"]
    assert "Command: `python bench/finetune.py" in (results / "finetune_digits_cnn.md").read_text()
    assert not (BENCH / "results" / "finetune_digits_cnn.json").exists()

    path = work / "digits_cnn-uniform.pt"
    loaded = amc.load_model(path)
    assert PrunedModel.load(path).policy["method"] == "uniform"
    fine_tuned = pruned.module.eval()
    for key, value in fine_tuned.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    x = normalize(data.test.images[:64], trained.mean, trained.std)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), fine_tuned(x))
    test_x = normalize(data.test.images, trained.mean, trained.std)
    assert accuracy(loaded, test_x, data.test.labels)[0] == pytest.approx(report["rows"][1]["test_accuracy"])
    assert report["rows"][1]["macs"] == pruned.save(tmp_path / "again.pt")["macs"]


@pytest.mark.slow
def test_the_speed_benchmarks_run_end_to_end_on_the_embedded_model(bench, tmp_path: Path) -> None:
    """bench/search_time.py (the CLI search, timed), bench/reward_speed.py (the levers, on its run folder),
    bench/scaling.py and bench/device.py (on the CPU here) write their reports from real work."""
    from amc.models.zoo import digits_checkpoint

    checkpoint, results = str(digits_checkpoint()), tmp_path / "results"
    model = ["--model", "digits_cnn", "--checkpoint", checkpoint, "--dataset", "digits"]
    bench("search_time").main([*model, "--runs", str(tmp_path / "runs"), "--extra", "--episodes 6 --warmup 3"],
                              results)
    report = json.loads((results / "search_time_digits_cnn_f50.json").read_text())
    assert report["config"]["episodes"] == 6 and report["wall_seconds"] > report["episode_seconds_total"] > 0
    assert 0.5 < report["policies"]["amc"]["test_accuracy"] <= 1

    bench("reward_speed").main([*model, "--run", str(tmp_path / "runs" / "search_time-digits_cnn_f50"),
                                "--policies", "3"], results)
    speed = json.loads((results / "reward_speed_digits_cnn.json").read_text())
    assert [row["policies"] for row in speed["setups"]] == [3] * 6
    assert speed["setups"][0]["full_evaluations"] == 3 and speed["setups"][0]["max_gap_points_full"] == 0

    bench("scaling").main(["--weights", str(tmp_path), "--dataset", "digits", "--configs", "digits_cnn:100",
                           "--episodes", "3"], results)
    assert json.loads((results / "scaling.json").read_text())["rows"][0]["reward_images"] == 100

    bench("device").main([*model, "--device", "cpu", "--episodes", "3",
                          "--warmup", "1", "--agreement", "2"], results)
    device = json.loads((results / "device_digits_cnn_f50.json").read_text())
    assert device["device"] == "cpu" and device["agreement"]["max_gap_points"] == 0


@pytest.mark.slow
def test_residual_streams_benchmark_searches_both_group_sets(bench, tmp_path: Path) -> None:
    """bench/residual_streams.py on an untrained resnet20 and the synthetic images: the internal set ignores the
    stream producers, the full set has one more group per stage, and every policy meets the budget."""
    checkpoint = tmp_path / "resnet20.pt"
    torch.manual_seed(0)
    torch.save({"state_dict": create_model("resnet20").state_dict(), "arch": "resnet20", "num_classes": 10},
               checkpoint)
    results = tmp_path / "results"
    bench("residual_streams").main(["--model", "resnet20", "--checkpoint", str(checkpoint), "--dataset", "synthetic",
                                    "--val-size", "64", "--episodes", "3", "--warmup", "1",
                                    "--runs", str(tmp_path / "runs")], results)
    report = json.loads((results / "residual_streams_resnet20_f50.json").read_text())
    internal, full = report["sets"]
    assert (internal["groups"], full["groups"]) == (9, 12)
    assert report["streams"].split(",")[:2] == ["conv1", "layer1.0.conv2"]
    assert all(p["macs_ratio"] <= 0.5 for s in report["sets"] for p in s["policies"].values())
    assert [r["model"] for r in report["latency"]][0] == "dense" and len(report["latency"]) == 5


@pytest.mark.slow
def test_latency_budget_benchmark_times_the_searched_policy_again(bench, tmp_path: Path) -> None:
    from amc.models.zoo import digits_checkpoint

    results = tmp_path / "results"
    bench("latency_budget").main(["--model", "digits_cnn", "--checkpoint", str(digits_checkpoint()), "--dataset",
                                  "digits", "--target-latency", "0.7", "--batch", "8", "--episodes", "4", "--warmup",
                                  "2", "--runs", str(tmp_path / "runs")], results)
    report = json.loads((results / "latency_budget_digits_cnn_l70.json").read_text())
    assert [r["policy"] for r in report["rows"]] == ["amc", "amc, table only", "uniform, table only", "uniform"]
    # the timed check only ever narrows a policy the table put within the budget
    assert all(r["predicted_ratio"] <= 0.7 and r["measured_ratio"] > 0 for r in report["rows"])
    run = next((tmp_path / "runs").glob("bench-latency_budget_digits_cnn_l70_v*"))
    policy = json.loads((run / "best_policy.json").read_text())
    assert {"latency_predicted", "latency_measured"} <= set(policy)
