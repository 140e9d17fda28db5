"""The AMC environment: budget wall, determinism, Gymnasium API."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import envs  # noqa: F401  (registers amc/ChannelPruning-v0)
from agents.config import SearchConfig
from amc.engine.budget import Budget, min_counts, uniform_counts
from amc.engine.pruner import ChannelPruner
from amc.models import create_model
from amc.reward import Evaluation
from envs.channel_pruning import ChannelPruningEnv

BOUNDS = {"lbound": SearchConfig.lbound, "rbound": SearchConfig.rbound}  # AMC's preserve-ratio range


def constant_eval(counts: np.ndarray) -> Evaluation:
    """Stands in for the fast evaluation where only the budget logic is under test."""
    return Evaluation(accuracy=0.5, loss=1.0)


@pytest.fixture(scope="module")
def pruners() -> dict[str, ChannelPruner]:
    return {
        "digits_cnn": ChannelPruner(create_model("digits_cnn"), (1, 8, 8)),
        "resnet20": ChannelPruner(create_model("resnet20"), (3, 32, 32)),
        "mobilenetv2": ChannelPruner(create_model("mobilenetv2"), (3, 32, 32)),
    }


def run_episode(env: ChannelPruningEnv, actions: list[float]) -> dict:
    env.reset(seed=0)
    for t in range(env.n_groups):
        _, _, terminated, truncated, info = env.step(np.array([actions[t % len(actions)]], dtype=np.float32))
        assert terminated == (t == env.n_groups - 1) and not truncated
    return info


ADVERSARIAL = [[1.0], [0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0, 0.0], [0.5]]


@pytest.mark.parametrize("model", ["digits_cnn", "resnet20", "mobilenetv2"])
@pytest.mark.parametrize("kind,ratio", [("flops", 0.5), ("flops", 0.3), ("params", 0.5)])
def test_action_wall_never_exceeds_budget(pruners, model, kind, ratio):
    pruner = pruners[model]
    env = ChannelPruningEnv(pruner, constant_eval, Budget(kind, ratio), **BOUNDS)
    cost = pruner.cost.macs if kind == "flops" else pruner.cost.params
    dense = float(cost(pruner.channels))
    rng = np.random.default_rng(0)
    sequences = ADVERSARIAL + [list(rng.random(env.n_groups)) for _ in range(10)]
    for actions in sequences:
        info = run_episode(env, actions)
        counts = np.array(info["counts"])
        assert cost(counts) <= ratio * dense
        assert info["cost_ratio"] == pytest.approx(cost(counts) / dense)
        assert (counts >= env.lower).all() and (counts <= pruner.channels).all()
        # the wall fills the budget: the last group takes all that is left
        if counts[-1] < pruner.channels[-1]:
            bigger = counts.copy()
            bigger[-1] += 1
            assert cost(bigger) > ratio * dense


def test_wall_uses_budget_fully(pruners):
    pruner = pruners["resnet20"]
    env = ChannelPruningEnv(pruner, constant_eval, Budget("flops", 0.5), **BOUNDS)
    for actions in ADVERSARIAL:
        ratio = run_episode(env, actions)["cost_ratio"]
        assert 0.49 <= ratio <= 0.5
    uniform = pruner.cost.macs(uniform_counts(pruner, pruner.cost.macs, env.target)) / env.dense_cost
    assert 0.48 <= uniform <= 0.5


def test_unreachable_budget_names_smallest(pruners):
    from amc.errors import AmcError

    with pytest.raises(AmcError, match="at least"):
        ChannelPruningEnv(pruners["resnet20"], constant_eval, Budget("flops", 0.01), **BOUNDS)


def test_step_after_the_episode_needs_reset(pruners):
    env = ChannelPruningEnv(pruners["digits_cnn"], constant_eval, Budget("flops", 0.5), **BOUNDS)
    run_episode(env, [0.5])
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.array([0.5], dtype=np.float32))
    env.reset(seed=0)
    env.step(np.array([0.5], dtype=np.float32))


def test_env_is_deterministic(pruners):
    env = ChannelPruningEnv(pruners["resnet20"], constant_eval, Budget("flops", 0.5), **BOUNDS)
    actions = list(np.random.default_rng(1).random(env.n_groups))
    first_obs = [env.reset(seed=3)[0]]
    first = run_episode(env, actions)
    second_obs = [env.reset(seed=3)[0]]
    second = run_episode(env, actions)
    assert np.array_equal(first_obs[0], second_obs[0])
    assert first == second


@pytest.mark.parametrize("model", ["digits_cnn", "resnet20", "mobilenetv2"])
def test_observations_in_box(pruners, model):
    """Every feature lies in [0, 1] by construction (the env does not clip), over adversarial and random
    episodes at a tight and a loose budget; the index feature runs 0 -> 1 over an episode."""
    for ratio in (0.3, 0.9):
        env = ChannelPruningEnv(pruners[model], constant_eval, Budget("flops", ratio), **BOUNDS)
        rng = np.random.default_rng(0)
        for actions in ADVERSARIAL + [list(rng.random(env.n_groups)) for _ in range(5)]:
            obs, _ = env.reset(seed=0)
            seen = [obs]
            for t in range(env.n_groups):
                obs, *_ = env.step(np.array([actions[t % len(actions)]], dtype=np.float32))
                seen.append(obs)
            seen = np.stack(seen)
            assert seen.dtype == np.float32 and seen.shape[1:] == env.observation_space.shape
            assert seen.min() >= 0.0 and seen.max() <= 1.0, seen[(seen < 0).any(1) | (seen > 1).any(1)]
            assert seen[0, 0] == 0.0 and seen[-2, 0] == 1.0


def test_check_env_and_registration(pruners):
    import gymnasium

    env = gymnasium.make("amc/ChannelPruning-v0", pruner=pruners["digits_cnn"], evaluate=constant_eval,
                         budget=Budget("flops", 0.5), **BOUNDS)
    check_env(env.unwrapped)


@pytest.mark.parametrize("reward", ["acc", "flops", "params"])
def test_rewards(pruners, reward):
    env = ChannelPruningEnv(pruners["digits_cnn"], constant_eval, Budget("flops", 0.5), **BOUNDS, reward=reward)
    info = run_episode(env, [0.5])
    expected = {"acc": 0.5, "flops": -0.5 * np.log(info["macs"]), "params": -0.5 * np.log(info["params"])}[reward]
    assert info["reward"] == pytest.approx(expected)


def test_latency_budget_and_reward(pruners):
    from amc.engine.latency import LatencyTable

    pruner = pruners["resnet20"]
    table = LatencyTable.measure(pruner, points=3, min_run_time=0.01)
    assert table(pruner.channels) == pytest.approx(table.dense)
    assert table(np.maximum(1, pruner.channels // 4)) < table.dense
    lower = ChannelPruningEnv(pruner, constant_eval, Budget("flops", 0.5), **BOUNDS).lower
    smallest = table(lower) / table.dense
    ratio = min(1.0, smallest + 0.5 * (1 - smallest))  # halfway between the smallest model and dense
    env = ChannelPruningEnv(pruner, constant_eval, Budget("latency", ratio), **BOUNDS, reward="latency", latency=table)
    for actions in ADVERSARIAL:
        info = run_episode(env, actions)
        assert table(np.array(info["counts"])) <= ratio * table.dense
        assert info["reward"] == pytest.approx(-0.5 * np.log(1000 * table(np.array(info["counts"]))))
    assert LatencyTable.from_dict(table.to_dict())(pruner.channels) == table(pruner.channels)


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2"])
def test_latency_table_is_exact_for_layers_timed_by_their_width_product(pruners, name, monkeypatch):
    """A layer whose time is its input width times its output width (what a conv's MACs are) is predicted exactly
    for any policy, even where one group cuts its input and another its output (a residual stream and a block):
    the table interpolates each layer over both widths, not each group's saving alone."""
    import amc.engine.latency as latency_module

    pruner = pruners[name]
    names = sorted(pruner.layers, key=lambda n: pruner.layers[n].order)

    def product(widths):
        ins, outs, _ = widths
        return (ins * outs).sum(-1) * 1e-3 + 5.0  # 5 ms of layers no group narrows

    def conv_product(layer):
        return 1e-3 * (layer.in_features * layer.out_features if isinstance(layer, torch.nn.Linear)
                       else layer.in_channels // layer.groups * layer.out_channels)

    def whole_model(model):  # what timing a whole model gives: its layers' products plus the 5 ms
        return sum(conv_product(m) for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))) + 5.0

    dense = product(pruner.cost.widths(pruner.channels))
    extra = 1.0  # how much more a whole network saves than its layers alone

    def whole_models(models, *args, **kwargs):
        return [dense - extra * (dense - whole_model(m)) for m in models]

    monkeypatch.setattr(latency_module, "_time_ms", lambda layer, *rest: conv_product(layer))
    monkeypatch.setattr(latency_module, "latencies", whole_models)
    table = latency_module.LatencyTable.measure(pruner, points=3)
    assert len(table.calibration) == len(latency_module.CALIBRATION_FRACTIONS)
    rng = np.random.default_rng(0)
    for _ in range(20):
        keep = np.array([rng.integers(g.min_keep, g.channels + 1) for g in pruner.groups])
        assert table(keep) == pytest.approx(product(pruner.cost.widths(keep)), rel=1e-9)
    assert len(names) >= len(table.layers)
    # a whole network that saves 30% less than its layers alone (overheads that pruning does not remove): the
    # calibration maps every raw prediction onto the whole models' timings, exactly at the calibration models
    # and, the relation being linear here, everywhere
    extra = 0.7
    table = latency_module.LatencyTable.measure(pruner, points=3)
    for _ in range(20):
        keep = np.array([rng.integers(g.min_keep, g.channels + 1) for g in pruner.groups])
        want = dense - 0.7 * (dense - product(pruner.cost.widths(keep)))
        assert table(keep) == pytest.approx(want, rel=1e-6)
    assert table(pruner.channels) == pytest.approx(dense)
    restored = latency_module.LatencyTable.from_dict(json.loads(json.dumps(table.to_dict())))
    assert restored(keep) == table(keep)


def test_latency_calibration_is_one_least_squares_scale():
    """The layers' savings are scaled by the least-squares fit of the calibration models' measured savings; a fit
    that noise makes non-positive falls back to the raw savings (cost must grow with width)."""
    from amc.engine.latency import LatencyTable

    layer = {"name": "l", "in0": 10, "in_cut": [0], "out0": 10, "out_cut": [1], "in_grid": [10],
             "out_grid": [0, 10], "times_ms": [[0.0, 100.0]]}  # raw = 10 ms per kept channel of 10
    exact = LatencyTable([10], [layer], 100.0, 1, 1, calibration=[(75.0, 82.5), (50.0, 65.0), (25.0, 47.5)])
    assert exact.scale == pytest.approx(0.7) and float(exact(np.array([4]))) == pytest.approx(100 - 0.7 * 60)
    noisy = LatencyTable([10], [layer], 100.0, 1, 1, calibration=[(75.0, 90.0), (50.0, 50.0)])
    assert noisy.scale == pytest.approx((25 * 10 + 50 * 50) / (25 * 25 + 50 * 50))
    assert LatencyTable([10], [layer], 100.0, 1, 1, calibration=[(50.0, 120.0)]).scale == 1.0
    assert LatencyTable.from_dict(json.loads(json.dumps(exact.to_dict()))).scale == exact.scale


def test_fit_to_latency_narrows_a_policy_until_it_meets_the_budget_when_timed(pruners, monkeypatch):
    """Timings the table did not foresee: the policy is narrowed by the largest factor (to 1/64) whose model meets
    the budget when timed; a policy that meets it is kept; an unreachable budget gives the smallest model."""
    import amc.engine.latency as latency_module

    pruner = pruners["resnet20"]

    def timed(model):  # a deterministic stand-in for a timing: MACs
        from amc.engine.cost import count_macs_params
        return float(count_macs_params(model, pruner.input_shape)[0])

    monkeypatch.setattr(latency_module, "latencies", lambda models, *a, **k: [timed(m) for m in models])
    table = latency_module.LatencyTable([int(c) for c in pruner.channels], [], 1.0, 1, 1)
    ratio = lambda keep: latency_module.measured_ratio(pruner, table, keep)  # noqa: E731
    full = pruner.channels.astype(np.int64)
    kept = latency_module.fit_to_latency(pruner, table, full, 2.0)
    assert kept.factor == 1.0 and (kept.keep == full).all() and kept.measured == pytest.approx(1.0)
    fit = latency_module.fit_to_latency(pruner, table, full, 0.5)
    assert 0 < fit.factor < 1 and fit.measured <= 0.5 and fit.first == pytest.approx(1.0)
    assert fit.measured == pytest.approx(ratio(fit.keep))
    wider = np.maximum(min_counts(pruner), np.floor((fit.factor + 1 / 64) * full)).astype(np.int64)
    assert ratio(wider) > 0.5  # the largest factor on the bisection's grid
    none = latency_module.fit_to_latency(pruner, table, full, 1e-6)
    assert none.factor == 0.0 and (none.keep == min_counts(pruner)).all()


def test_latency_table_in_channels_last_at_a_batch(pruners):
    from amc.engine.latency import LatencyTable

    pruner = pruners["resnet20"]
    table = LatencyTable.measure(pruner, batch_size=4, channels_last=True, points=2, min_run_time=0.01)
    assert table(np.maximum(1, pruner.channels // 4)) < table.dense
    restored = LatencyTable.from_dict(table.to_dict())
    assert (restored.batch_size, restored.channels_last) == (4, True)
    assert all(p.is_contiguous() for p in pruner.model.parameters())  # timed layers are fresh copies


def test_channel_round_grid_and_the_wall(pruners, monkeypatch):
    """AMC's channel rounding: counts are multiples of 8 or the whole group, from the lower bound rounded up;
    the action wall moves on that grid and never exceeds the budget."""
    from amc.engine.budget import allowed_counts, ratio_counts, snap_counts

    pruner = pruners["resnet20"]  # groups of 16, 32 and 64 channels
    monkeypatch.setattr(pruner, "channel_round", 8)
    allowed = allowed_counts(pruner, 0.2)
    assert [a.tolist() for a in allowed[:1]] == [[8, 16]] and allowed[-1].tolist() == [16, 24, 32, 40, 48, 56, 64]
    assert min_counts(pruner, 0.2).tolist() == [a[0] for a in allowed]
    assert set(ratio_counts(pruner, 0.55).tolist()) == {8, 16, 32}  # 8.8, 17.6, 35.2 to the nearest multiple
    assert snap_counts(pruner, np.full(len(pruner.groups), 23), down=True)[-1] == 16
    for kind, ratio in (("flops", 0.5), ("params", 0.3)):
        env = ChannelPruningEnv(pruner, constant_eval, Budget(kind, ratio), **BOUNDS)
        for actions in ADVERSARIAL + [[0.37, 0.81, 0.12]]:
            info = run_episode(env, actions)
            counts = np.array(info["counts"])
            assert all(c in a for c, a in zip(counts, allowed)), counts
            assert info["cost_ratio"] <= ratio + 1e-12
