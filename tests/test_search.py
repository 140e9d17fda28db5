"""The AMC search on the embedded digits model: it learns, beats uniform, reproduces and resumes."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import rows
from stable_baselines3.common.callbacks import CallbackList
from stable_baselines3.common.logger import Logger

from agents.callbacks import EpisodeRecorderCallback, RewardRelabelCallback
from agents.config import SearchConfig
from agents.ddpg import AGENTS, BaselineReplayBuffer, InvertingGradientClip, make_agent, truncated_normal
from agents.search import policy_from_agent, run_search
from amc.engine.budget import Budget
from amc.errors import AmcError
from amc.models.zoo import digits_checkpoint
from amc.policy import Policy
from amc.reward import Evaluation
from envs.channel_pruning import ChannelPruningEnv

BOUNDS = {"lbound": SearchConfig.lbound, "rbound": SearchConfig.rbound}  # AMC's preserve-ratio range


@pytest.fixture(scope="module")
def task(digits_task):
    return digits_task


def config(tmp_path: Path, name: str, **kw) -> SearchConfig:
    base = SearchConfig(checkpoint=str(digits_checkpoint()), budget_ratio=0.3, episodes=12, warmup=4,
                        out=str(tmp_path / name))
    return replace(base, **kw)


def test_search_learns_and_beats_uniform(task, tmp_path):
    result = run_search(config(tmp_path, "learn", episodes=60, warmup=20), progress=False, task=task)
    rewards = [float(r["reward"]) for r in rows(result.run_dir)]
    assert len(rewards) == 60
    assert result.best.extra["val_accuracy"] > result.uniform.extra["val_accuracy"]
    # after warm-up the agent's policies are better on average than uniformly random ones
    assert np.mean(rewards[20:]) > np.mean(rewards[:20])
    assert result.best.predicted["macs_ratio"] <= 0.3
    # the log holds the exact policy of every episode: the best row's counts are the first candidate of the
    # final selection, and the final policy is the candidate most accurate on the selection split
    best_row = max(rows(result.run_dir), key=lambda r: float(r["reward"]))
    selection = json.loads((result.run_dir / "final_selection.json").read_text())
    candidates = selection["candidates"]
    assert [int(best_row[f"keep:{n}"]) for n in task.pruner.names] == candidates[0]["counts"]
    assert len({tuple(c["counts"]) for c in candidates}) == len(candidates) == 8
    assert [c["reward"] for c in candidates] == sorted((c["reward"] for c in candidates), reverse=True)
    chosen = candidates[selection["chosen"]]
    assert chosen["select_accuracy"] == max(c["select_accuracy"] for c in candidates)
    assert result.best.counts_for(task.pruner).tolist() == chosen["counts"]
    extra = result.best.extra
    assert extra["select_accuracy"] == chosen["select_accuracy"] and extra["episode"] == chosen["episode"]
    assert extra["select_gap"] == pytest.approx(extra["val_accuracy"] - extra["select_accuracy"])
    assert Policy.load(result.run_dir / "best_policy.json").to_dict() == result.best.to_dict()


def test_run_folder(task, tmp_path):
    cfg = config(tmp_path, "run")
    result = run_search(cfg, progress=False, task=task)
    run = result.run_dir
    for name in ("config.json", "episodes.csv", "best_policy.json", "agent.zip", "rewards.png", "best_policy.png"):
        assert (run / name).exists(), name
    assert json.loads((run / "config.json").read_text())["episodes"] == 12
    assert [int(r["episode"]) for r in rows(run)] == list(range(1, 13))
    policy = Policy.load(run / "best_policy.json")
    assert policy.counts_for(task.pruner).shape == (len(task.pruner.groups),)
    with pytest.raises(AmcError, match="--resume"):
        run_search(cfg, progress=False, task=task)
    run_search(cfg, force=True, progress=False, task=task)


def test_trained_agent_applies_at_a_new_budget(task, tmp_path):
    result = run_search(config(tmp_path, "agent"), progress=False, task=task)
    for ratio in (0.3, 0.6):
        counts, info = policy_from_agent(result.run_dir / "agent.zip", task, Budget("flops", ratio))
        dense = task.pruner.cost.macs(task.pruner.channels)
        assert ratio - 0.03 <= task.pruner.cost.macs(counts) / dense <= ratio
        assert 0 <= info["accuracy"] <= 1
    with pytest.raises(AmcError, match="does not exist"):
        policy_from_agent(tmp_path / "missing.zip", task, Budget("flops", 0.5))


def test_seeded_search_reproduces(task, tmp_path):
    first = run_search(config(tmp_path, "a"), progress=False, task=task)
    second = run_search(config(tmp_path, "b"), progress=False, task=task)
    assert rows(first.run_dir) == rows(second.run_dir)


def test_resume_continues_exactly(task, tmp_path):
    whole = run_search(config(tmp_path, "whole"), progress=False, task=task)
    cut = config(tmp_path, "cut", episodes=7)
    run_search(cut, progress=False, task=task)
    resumed = run_search(replace(cut, episodes=12), resume=True, progress=False, task=task)
    assert resumed.episodes == 12
    assert rows(resumed.run_dir) == rows(whole.run_dir)


def test_moved_run_folder_resumes(task, tmp_path):
    cut = config(tmp_path, "before", episodes=7)
    run_search(cut, progress=False, task=task)
    (tmp_path / "before").rename(tmp_path / "after")
    resumed = run_search(replace(cut, episodes=9, out=str(tmp_path / "after")), resume=True, progress=False, task=task)
    assert resumed.episodes == 9
    assert json.loads((tmp_path / "after" / "config.json").read_text())["out"] == str(tmp_path / "after")


def test_resume_refuses_other_arguments(task, tmp_path):
    cfg = config(tmp_path, "args")
    run_search(cfg, progress=False, task=task)
    with pytest.raises(AmcError, match="--seed"):
        run_search(replace(cfg, seed=1), resume=True, progress=False, task=task)


def test_search_refuses_a_task_prepared_otherwise(task, tmp_path):
    with pytest.raises(AmcError, match="other settings"):
        run_search(config(tmp_path, "other", seed=1), progress=False, task=task)
    assert not (tmp_path / "other" / "config.json").exists()  # refused before anything is written


def test_actor_output_can_leave_a_bound():
    """Unlike tanh, the bounded output never loses its gradient back into [-1, 1]."""
    x = torch.tensor([-3.0, -1.0, -1.0, 0.0, 1.0, 3.0], requires_grad=True)
    y = InvertingGradientClip()(x)
    # the loss pushes entries 0 and 5 further out, 1 further down, 2 up, 3 up, 4 further up
    push_up = torch.tensor([False, False, True, True, True, True])
    (torch.where(push_up, -y, y)).sum().backward()
    assert y.tolist() == [-1.0, -1.0, -1.0, 0.0, 1.0, 1.0]
    step = -x.grad  # the direction gradient descent moves x
    assert step[0] > 0 and step[5] < 0  # beyond a bound: back inside, whatever the loss wants
    assert step[1] == 0 and step[4] == 0  # at a bound, pushed outwards: stays
    assert step[2] == 1 and step[3] == 0.5  # at the lower bound pushed up: the full gradient


def test_agent_is_configured_as_amc(task):
    env = ChannelPruningEnv(task.pruner, task.evaluator, Budget("flops", 0.5), **BOUNDS)
    agent = make_agent("ddpg", env, env.n_groups, warmup_episodes=100)
    assert agent.learning_starts == 100 * env.n_groups
    assert agent.replay_buffer.buffer_size == 100 * env.n_groups
    assert (agent.tau, agent.gamma, agent.batch_size) == (0.01, 1.0, 64)
    layers = [m.out_features for m in agent.actor.mu if hasattr(m, "out_features")]
    assert layers == [300, 300, 1]
    agent.set_logger(Logger(None, []))
    agent._update_learning_rate([agent.actor.optimizer, agent.critic.optimizer])
    assert agent.actor.optimizer.param_groups[0]["lr"] == 1e-4
    assert agent.critic.optimizer.param_groups[0]["lr"] == 1e-3
    agent._episode_num = 110
    assert agent.exploration_sigma() == pytest.approx(0.5 * 0.95**10)
    assert isinstance(agent.replay_buffer, BaselineReplayBuffer)


def test_replay_rewards_are_centred_on_one_moving_baseline(task):
    env = ChannelPruningEnv(task.pruner, task.evaluator, Budget("flops", 0.5), **BOUNDS)
    buffer = make_agent("ddpg", env, env.n_groups, warmup_episodes=1).replay_buffer
    obs, action = np.zeros((1, 11), np.float32), np.zeros((1, 1), np.float32)
    for reward in (0.7, 0.9):  # two stored episodes of 10 transitions each
        for _ in range(10):
            buffer.add(obs, obs, action, np.array([reward]), np.array([False]), [{}])
    first = buffer._get_samples(np.arange(20)).rewards.numpy().ravel()
    np.testing.assert_allclose(first, [-0.1] * 10 + [0.1] * 10, atol=1e-6)  # both episodes on one scale
    assert buffer.baseline == pytest.approx(0.8)
    buffer._get_samples(np.arange(10, 20))  # a batch of the better episode only: the baseline moves halfway
    assert buffer.baseline == pytest.approx(0.85)


@pytest.mark.parametrize("algo", ["td3", "sac"])
def test_other_algorithms_run(task, tmp_path, algo):
    result = run_search(config(tmp_path, algo, algo=algo, episodes=6, warmup=2), progress=False, task=task)
    assert result.episodes == 6


def test_truncated_normal_is_a_truncated_normal():
    """Draws of N(0.95, 0.5^2) truncated to [0, 1]: in bounds, no mass piled on a bound (as clipping
    would put 46% at 1.0), and the truncated normal's mean."""
    rng = np.random.default_rng(0)
    mu, sigma = 0.95, 0.5
    draws = truncated_normal(np.full(20000, mu), sigma, 0.0, 1.0, rng)
    assert draws.min() >= 0.0 and draws.max() <= 1.0
    assert np.mean(draws == 1.0) == 0.0 and np.mean(draws > 0.99) < 0.05

    def pdf(x: float) -> float:
        return math.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)

    def cdf(x: float) -> float:
        return 0.5 * (1 + math.erf(x / math.sqrt(2)))

    a, b = (0.0 - mu) / sigma, (1.0 - mu) / sigma
    expected = mu + sigma * (pdf(a) - pdf(b)) / (cdf(b) - cdf(a))
    assert draws.mean() == pytest.approx(expected, abs=0.01)


def test_actor_output_layer_is_the_bounded_one(task):
    env = ChannelPruningEnv(task.pruner, task.evaluator, Budget("flops", 0.5), **BOUNDS)
    agent = make_agent("ddpg", env, env.n_groups, warmup_episodes=1)
    for actor in (agent.actor, agent.actor_target):
        assert isinstance(actor.mu[-1], InvertingGradientClip)
        assert not any(isinstance(m, torch.nn.Tanh) for m in actor.mu)


def test_amc_knobs_round_trip_through_save_and_load(task, tmp_path):
    env = ChannelPruningEnv(task.pruner, task.evaluator, Budget("flops", 0.5), **BOUNDS)
    knobs = {"sigma0": 0.3, "sigma_decay": 0.9, "actor_lr": 2e-4, "critic_lr": 3e-3}
    agent = make_agent("ddpg", env, env.n_groups, warmup_episodes=7, **knobs)
    agent.save(tmp_path / "agent.zip")
    loaded = AGENTS["ddpg"].load(tmp_path / "agent.zip")
    for name, value in {**knobs, "warmup_episodes": 7}.items():
        assert getattr(agent, name) == getattr(loaded, name) == value, name


def test_every_transition_carries_its_episodes_final_reward_when_the_agent_trains(task):
    """Pins SB3's call order that the relabelling relies on: when `train` runs, the episode just stored
    holds its final reward on every step (the env pays it on the last step only)."""
    env = ChannelPruningEnv(task.pruner, lambda counts: Evaluation(float(counts.sum()) / 1000, 0.0),
                            Budget("flops", 0.5), **BOUNDS)
    n = env.n_groups
    agent = make_agent("ddpg", env, n, warmup_episodes=2, seed=0)
    agent.set_logger(Logger(None, []))
    finals: list[float] = []
    checked: list[int] = []
    train = agent.train

    def checking_train(*args, **kwargs):
        stored = agent.replay_buffer.rewards[: agent.replay_buffer.pos, 0]
        for episode, final in enumerate(finals):
            np.testing.assert_allclose(stored[episode * n : (episode + 1) * n], final, rtol=1e-6)
        checked.append(len(finals))
        return train(*args, **kwargs)

    agent.train = checking_train
    recorder = EpisodeRecorderCallback(lambda info: finals.append(info["reward"]), lambda: None)
    agent.learn(total_timesteps=5 * n, callback=CallbackList([RewardRelabelCallback(n), recorder]))
    assert len(finals) == 5 and checked == [3, 4, 5]


def test_a_latency_policy_that_runs_over_its_budget_is_narrowed_and_rescored(digits_task, monkeypatch):
    """When the final policy's timing misses the budget the table promised, the search's final policy is the
    narrowed one, re-scored on the reward and selection splits, and says what happened."""
    import agents.search as search
    from amc.engine.latency import LatencyFit

    task = digits_task
    config = SearchConfig(budget_kind="latency", budget_ratio=0.8)
    full = task.pruner.channels
    narrowed = np.maximum(1, full // 2)

    class Table:  # the table's prediction: the kept share of channels
        dense = 1.0

        def __call__(self, keep):
            return np.asarray(keep).sum(-1) / full.sum()

    monkeypatch.setattr(search, "fit_to_latency", lambda *a, **k: LatencyFit(narrowed, 0.7, 0.5, 0.95))
    final = search._policy(task, config, full.tolist(), method="amc", val_accuracy=1.0, episode=3)
    with pytest.warns(UserWarning, match="narrowed by a factor 0.500"):
        policy = search._timed_within_budget(task, config, Table(), final)
    assert policy.counts_for(task.pruner).tolist() == narrowed.tolist()
    assert policy.extra["latency_measured"] == 0.7 and policy.extra["latency_before"] == 0.95
    assert policy.extra["latency_narrowed"] == 0.5 and policy.extra["latency_predicted"] == pytest.approx(1.0)
    val, select = task.evaluator.rescore(narrowed)
    assert policy.extra["val_accuracy"] == val.accuracy and policy.extra["select_accuracy"] == select.accuracy
    assert policy.extra["episode"] == 3
    monkeypatch.setattr(search, "fit_to_latency", lambda *a, **k: LatencyFit(full, 0.75, 1.0, 0.75))
    kept = search._timed_within_budget(task, config, Table(), final)
    assert kept is final and kept.extra["latency_measured"] == 0.75
