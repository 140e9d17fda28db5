"""Policy files, pruned-model files and the `amc` command line (run in-process through `main`)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import assert_user_error, cifar_dir, real_checkpoint

from amc.cli import main
from amc.engine.budget import Budget
from amc.engine.cost import count_macs_params
from amc.engine.pruner import ChannelPruner
from amc.errors import AmcError
from amc.models import create_model
from amc.models.pruned import load_model, read_model_info, save_pruned
from amc.policy import GroupKeep, Policy

DIGITS_SHAPE = (1, 8, 8)

# conv -> bn -> relu -> conv -> pool -> Linear: a user factory with a num_classes argument.
USER_MODEL = textwrap.dedent(
    """
    import torch.nn as nn


    def small_net(num_classes=10):
        return nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes),
        )
    """
)


@pytest.fixture(scope="module")
def pruner() -> ChannelPruner:
    torch.manual_seed(0)
    return ChannelPruner(create_model("digits_cnn"), DIGITS_SHAPE)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run `amc argv...` in-process; returns (exit code, stdout, stderr)."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def write_policy(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


def valid_policy(pruner: ChannelPruner) -> dict:
    return Policy.from_counts(pruner, "digits_cnn", pruner.channels // 2).to_dict()


# ----------------------------------------------------------------------------------------------------
# Policy files


def test_policy_round_trip(pruner: ChannelPruner, tmp_path: Path) -> None:
    counts = np.array([8, 16, 40, 30])
    policy = Policy.from_counts(pruner, "digits_cnn", counts, Budget("flops", 0.5), method="uniform", seed=3,
                                val_accuracy=0.91)
    assert policy.groups[0] == GroupKeep("conv1", 16, 8)
    assert policy.predicted["macs"] == int(pruner.cost.macs(counts))
    assert policy.predicted["params"] == int(pruner.cost.params(counts))
    assert policy.predicted["macs_ratio"] == pytest.approx(pruner.cost.macs(counts) / pruner.cost.macs(pruner.channels))
    policy.save(tmp_path / "policy.json")
    data = json.loads((tmp_path / "policy.json").read_text())
    assert data["format"] == "amc-policy/1" and data["method"] == "uniform" and data["seed"] == 3
    loaded = Policy.load(tmp_path / "policy.json")
    assert loaded == policy
    assert loaded.extra == {"selection": "ls", "method": "uniform", "seed": 3, "val_accuracy": 0.91}
    np.testing.assert_array_equal(loaded.counts_for(pruner), counts)


def test_policy_without_a_group_keeps_it_whole(pruner: ChannelPruner, tmp_path: Path) -> None:
    data = {"format": "amc-policy/1", "model": "digits_cnn", "groups": [{"name": "conv2", "channels": 32, "keep": 5}]}
    policy = Policy.load(write_policy(tmp_path / "p.json", data))
    assert policy.budget is None and policy.predicted == {}
    np.testing.assert_array_equal(policy.counts_for(pruner), [16, 5, 64, 64])


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        (None, ["not found"]),
        ('{\n  "format": "amc-policy/1",\n  "model": \n}', ["not valid JSON", "line 4"]),
        ('[1, 2]', ["not an object"]),
        ('{"model": "digits_cnn", "groups": []}', ['no "format" field']),
        ('{"format": "amc-policy/9", "model": "digits_cnn", "groups": []}', ["amc-policy/9", "this amc reads amc-policy/1"]),
        ('{"format": "something/1", "model": "digits_cnn", "groups": []}', ["'something/1'", "amc-policy/1"]),
        ('{"format": "amc-policy/1", "groups": []}', ['"model"']),
        ('{"format": "amc-policy/1", "model": "m", "groups": {}}', ['"groups" list']),
        ('{"format": "amc-policy/1", "model": "m", "groups": [{"name": "a", "channels": 8, "keep": "4"}]}',
         ["groups[0]"]),
        ('{"format": "amc-policy/1", "model": "m", "groups": [{"name": "a", "channels": 8, "keep": 4}, '
         '{"name": "a", "channels": 8, "keep": 2}]}', ["twice"]),
        ('{"format": "amc-policy/1", "model": "m", "budget": {"kind": "flops", "ratio": 1.5}, "groups": []}',
         ["invalid budget", "1.5"]),
    ],
)
def test_policy_load_errors(tmp_path: Path, content: str | None, fragments: list[str]) -> None:
    path = tmp_path / "policy.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(AmcError) as excinfo:
        Policy.load(path)
    message = str(excinfo.value)
    assert "\n" not in message and str(path) in message
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize(
    ("group", "fragments"),
    [
        ({"name": "conv9", "channels": 16, "keep": 8}, ["conv9", "amc profile --model"]),
        ({"name": "conv1", "channels": 12, "keep": 8}, ["12 channels", "16"]),
        ({"name": "conv1", "channels": 16, "keep": 0}, ["[1, 16]"]),
        ({"name": "conv1", "channels": 16, "keep": 17}, ["[1, 16]"]),
    ],
)
def test_policy_counts_for_checks_the_model(pruner: ChannelPruner, tmp_path: Path, group: dict,
                                            fragments: list[str]) -> None:
    data = {"format": "amc-policy/1", "model": "digits_cnn", "groups": [group]}
    policy = Policy.load(write_policy(tmp_path / "p.json", data))
    with pytest.raises(AmcError) as excinfo:
        policy.counts_for(pruner)
    assert "\n" not in str(excinfo.value)
    for fragment in fragments:
        assert fragment in str(excinfo.value)


# ----------------------------------------------------------------------------------------------------
# Pruned-model files


def test_pruned_model_file_round_trip(pruner: ChannelPruner, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    keep = {g.name: torch.from_numpy(np.sort(rng.choice(g.channels, g.channels // 3, replace=False)))
            for g in pruner.groups}
    pruned = pruner.prune(keep, reconstruct=False)
    policy = valid_policy(pruner)
    save_pruned(tmp_path / "m.pt", pruned, base="digits_cnn", num_classes=10, input_shape=DIGITS_SHAPE,
                mean=(0.3,), std=(0.4,), kept={k: v.tolist() for k, v in keep.items()}, policy=policy)
    restored = load_model(tmp_path / "m.pt")
    x = torch.randn(8, *DIGITS_SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(restored(x), pruned.eval()(x))
    info = read_model_info(tmp_path / "m.pt")
    assert "state_dict" not in info
    assert (info["macs"], info["params"]) == count_macs_params(pruned, DIGITS_SHAPE)
    counts = np.array([len(keep[n]) for n in pruner.names])
    assert info["macs"] == int(pruner.cost.macs(counts))
    assert info["policy"] == policy and info["mean"] == [0.3] and info["input_shape"] == [1, 8, 8]


def test_load_model_refuses_a_dense_checkpoint(tmp_path: Path) -> None:
    torch.save({"state_dict": create_model("digits_cnn").state_dict()}, tmp_path / "dense.pt")
    with pytest.raises(AmcError, match="not an amc model file; dense checkpoints load with --model NAME"):
        load_model(tmp_path / "dense.pt")


# ----------------------------------------------------------------------------------------------------
# The command line


def test_cli_profile_json_needs_only_shapes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "profile", "--model", "resnet20", "--input-shape", "3,32,32", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["macs"] == 40_551_040 and result["params"] == 269_722
    groups = {g["name"]: g for g in result["groups"]}
    streams = ["conv1", "layer2.0.conv2", "layer3.0.conv2"]  # each stage's residual width
    assert [(n, groups[n]["channels"], groups[n]["consumer"]) for n in streams] == [
        ("conv1", 16, None), ("layer2.0.conv2", 32, None), ("layer3.0.conv2", 64, None)]
    # the stage-1 stream sets the stem, three conv2 outputs and four conv1 inputs
    assert len(groups["conv1"]["layers"]) == 8
    internal = [g for g in result["groups"] if g["name"] not in streams]
    assert len(internal) == 9 and all(g["consumer"] == g["name"].replace("conv1", "conv2") for g in internal)
    code, out, err = run(capsys, "profile", "--model", "resnet20", "--ignore", ",".join(streams), "--json")
    assert code == 0, err
    assert [g["name"] for g in json.loads(out)["groups"]] == [g["name"] for g in internal]
    code, _, err = run(capsys, "profile", "--model", "resnet20", "--ignore", "layer9.conv1")
    assert_user_error(code, err, "--ignore names layer9.conv1")


def test_cli_uniform_latency_baseline_channels_last(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    policy_path = tmp_path / "policy.json"
    argv = ("baseline", "--method", "uniform", "--model", "digits_cnn", "--input-shape", "1,8,8", "--target-latency",
            "0.9", "--latency-channels-last", "--out", policy_path)
    code, _, err = run(capsys, *argv, "--latency-batch", "0")
    assert_user_error(code, err, "--latency-batch", "0 is outside")
    # the rules that evaluate policies take FLOPs or params budgets: refused before any work, data or not
    code, _, err = run(capsys, *argv, "--method", "dp")
    assert_user_error(code, err, "--method dp", "--target-latency", "--method uniform")
    code, out, err = run(capsys, *argv, "--latency-batch", "8")
    assert code == 0, err
    policy = json.loads(policy_path.read_text())
    assert policy["budget"] == {"kind": "latency", "ratio": 0.9} and policy["predicted"]["macs_ratio"] < 1.0
    assert policy["latency_predicted"] <= 0.9 and f"latency {100 * policy['latency_predicted']:.1f}% (table)" in out


def test_cli_channel_round(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    policy_path = tmp_path / "policy.json"
    argv = ("baseline", "--method", "uniform", "--model", "digits_cnn", "--input-shape", "1,8,8", "--target-flops",
            "0.5", "--out", policy_path)
    code, _, err = run(capsys, *argv, "--channel-round", "0")
    assert_user_error(code, err, "--channel-round", "0 is outside")
    code, _, err = run(capsys, *argv, "--channel-round", "8")
    assert code == 0, err
    policy = json.loads(policy_path.read_text())
    assert policy["channel_round"] == 8 and policy["predicted"]["macs_ratio"] <= 0.5
    assert all(g["keep"] % 8 == 0 or g["keep"] == g["channels"] for g in policy["groups"])
    # a budget only the rounding puts out of reach says so, not "a smaller --lbound" (resnet20's groups: 16-64)
    resnet = ("baseline", "--model", "resnet20", "--input-shape", "3,32,32", "--out", tmp_path / "r.json", "--force")
    assert run(capsys, *resnet, "--target-flops", "0.1")[0] == 0
    code, _, err = run(capsys, *resnet, "--target-flops", "0.1", "--channel-round", "8")
    assert_user_error(code, err, "cannot be met with --channel-round 8", "a smaller --channel-round")
    code, _, err = run(capsys, *resnet, "--target-flops", "0.5", "--channel-round", "65")
    assert_user_error(code, err, "--channel-round 65 leaves no group prunable", "the widest has 64")


def test_cli_baseline_apply_eval_on_digits(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    policy_path, model_path = tmp_path / "policy.json", tmp_path / "pruned.pt"
    code, out, err = run(capsys, "baseline", "--method", "uniform", "--model", "digits_cnn", "--input-shape", "1,8,8",
                         "--target-flops", "0.5", "--out", policy_path)
    assert code == 0, err
    policy = json.loads(policy_path.read_text())
    assert 0.48 <= policy["predicted"]["macs_ratio"] <= 0.5
    assert policy["method"] == "uniform" and policy["budget"] == {"kind": "flops", "ratio": 0.5}

    code, out, err = run(capsys, "apply", "--model", "digits_cnn", "--dataset", "digits", "--policy", policy_path,
                         "--out", model_path, "--val-size", "200", "--json")
    assert code == 0, err
    applied = json.loads(out)
    assert applied["macs"] == policy["predicted"]["macs"] and 0.0 <= applied["test_accuracy"] <= 1.0
    model = load_model(model_path)
    assert count_macs_params(model, DIGITS_SHAPE)[0] == policy["predicted"]["macs"]
    assert read_model_info(model_path)["policy"]["groups"] == policy["groups"]

    code, out, err = run(capsys, "eval", "--model", model_path, "--dataset", "digits", "--json")
    assert code == 0, err
    evaluated = json.loads(out)
    assert evaluated["macs"] == applied["macs"] and evaluated["images"] == 360
    assert evaluated["accuracy"] == pytest.approx(applied["test_accuracy"])
    assert set(evaluated) == {"model", "split", "accuracy", "images", "macs", "params", "latency_ms", "device",
                              "threads", "layout"}
    assert evaluated["device"] == ("cuda:0" if torch.cuda.is_available() else "cpu")

    code, out, err = run(capsys, "eval", "--compare", "digits_cnn", model_path, "--dataset", "digits",
                         "--channels-last", "--json")
    assert code == 0, err
    compared = json.loads(out)
    dense, pruned = compared["models"]
    assert compared["layout"] == "channels-last"
    assert pruned["macs"] == applied["macs"] < dense["macs"]
    assert pruned["test_accuracy"] == pytest.approx(applied["test_accuracy"])
    assert compared["speedup_batch64"] == pytest.approx(dense["latency_ms_batch64"] / pruned["latency_ms_batch64"])

    code, out, err = run(capsys, "eval", "--model", model_path, "--dataset", "digits", "--split", "val",
                         "--val-size", "200", "--json")
    assert code == 0, err
    assert json.loads(out)["split"] == "val" and json.loads(out)["images"] == 200


def test_cli_user_factory_model(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "user_net.py").write_text(USER_MODEL)
    spec = f"{tmp_path / 'user_net.py'}:small_net"
    code, out, err = run(capsys, "profile", "--model", spec, "--input-shape", "3,16,16", "--json")
    assert code == 0, err
    assert [g["name"] for g in json.loads(out)["groups"]] == ["0", "3"]
    code, _, err = run(capsys, "baseline", "--model", spec, "--input-shape", "3,16,16", "--target-params", "0.6",
                       "--out", tmp_path / "p.json")
    assert code == 0, err
    code, out, err = run(capsys, "apply", "--model", spec, "--input-shape", "3,16,16", "--no-reconstruct",
                         "--policy", tmp_path / "p.json", "--out", tmp_path / "m.pt", "--json")
    assert code == 0, err
    assert json.loads(out)["params_ratio"] <= 0.6
    assert isinstance(load_model(tmp_path / "m.pt"), nn.Module)


def test_cli_user_errors_are_one_line(capsys: pytest.CaptureFixture[str], pruner: ChannelPruner,
                                      tmp_path: Path) -> None:
    code, _, err = run(capsys, "eval", "--model", "no_such_net", "--dataset", "digits")
    assert_user_error(code, err, "unknown model 'no_such_net'")

    code, _, err = run(capsys, "baseline", "--model", "digits_cnn", "--input-shape", "1,8,8", "--target-flops", "1.5",
                       "--out", tmp_path / "p.json")
    assert_user_error(code, err, "1.5")

    apply = ("apply", "--model", "digits_cnn", "--dataset", "digits")
    code, _, err = run(capsys, *apply, "--policy", tmp_path / "missing.json", "--out", tmp_path / "m.pt")
    assert_user_error(code, err, "missing.json", "not found")

    data = valid_policy(pruner)
    data["groups"][0]["name"] = "conv7"
    bad = write_policy(tmp_path / "bad.json", data)
    code, _, err = run(capsys, *apply, "--policy", bad, "--out", tmp_path / "m.pt")
    assert_user_error(code, err, "conv7", "amc profile")

    good = write_policy(tmp_path / "good.json", valid_policy(pruner))
    code, _, err = run(capsys, "apply", "--model", "digits_cnn", "--input-shape", "1,8,8", "--policy", good,
                       "--out", tmp_path / "m.pt")
    assert_user_error(code, err, "--no-reconstruct")

    code, _, err = run(capsys, *apply, "--agent", tmp_path / "agent.zip", "--out", tmp_path / "m.pt")
    assert_user_error(code, err, "needs --dataset (for the reward) and a budget")

    dense = tmp_path / "dense.pt"
    torch.save(create_model("digits_cnn").state_dict(), dense)
    code, _, err = run(capsys, "eval", "--model", dense, "--dataset", "digits")
    assert_user_error(code, err, "not an amc model file")


def test_cli_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys)[0] == 2
    assert run(capsys, "profile", "--model", "resnet20", "--input-shape", "3x32x32")[0] == 2
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.startswith("amc ")


@pytest.mark.realdata
@pytest.mark.slow
def test_cli_eval_resnet20_on_real_cifar(capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint, data_dir = real_checkpoint("resnet20"), cifar_dir()
    code, out, err = run(capsys, "eval", "--model", "resnet20", "--checkpoint", checkpoint, "--dataset",
                         "imagefolder", "--data-dir", data_dir, "--split", "test", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["accuracy"] == pytest.approx(0.8812, abs=1e-9)
    assert result["macs"] == 40_551_040 and result["images"] == 10_000


def test_uniform_baseline_without_data_records_the_selection_apply_will_use(capsys, tmp_path: Path) -> None:
    policy = tmp_path / "u.json"
    assert run(capsys, "baseline", "--model", "digits_cnn", "--input-shape", "1,8,8", "--target-flops", "0.5",
               "--out", policy)[0] == 0
    assert json.loads(policy.read_text())["selection"] == "l1"
    code, _, err = run(capsys, "apply", "--model", "digits_cnn", "--input-shape", "1,8,8", "--policy", policy,
                       "--no-reconstruct", "--out", tmp_path / "m.pt")
    assert code == 0 and "least-squares" not in err, err  # no warning about a search that never happened


def test_output_into_a_closed_pipe_is_no_error(capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    """`amc profile | head -1`: the reader goes away early; amc stops quietly (exit 0), as Unix tools do."""
    class ClosedPipe:
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self) -> None:
            pass

    monkeypatch.setattr("sys.stdout", ClosedPipe())
    assert main(["profile", "--model", "resnet20"]) == 0
    assert capsys.readouterr().err == ""
