"""SB3 off-policy agents configured as AMC's: DDPG by default, TD3 or SAC by flag.

AMC explores with a truncated normal around the actor's action, sigma = sigma0 * decay^(episodes
after warm-up); SB3's `ActionNoise` cannot see the actor's action, so `_sample_action` is overridden.
AMC also trains actor and critic with different learning rates (1e-4 / 1e-3), where SB3 has one, and
centres the rewards of every sampled batch on a moving average of batch rewards (`BaselineReplayBuffer`).
DDPG's and TD3's actor ends in `InvertingGradientClip` instead of tanh (`BoundedActorPolicy`), so an action
pushed to a bound does not saturate there.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch as th
from stable_baselines3 import DDPG, SAC, TD3
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.noise import ActionNoise
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from stable_baselines3.common.utils import update_learning_rate
from stable_baselines3.common.vec_env import VecNormalize
from stable_baselines3.td3.policies import Actor, TD3Policy

from agents.config import ALGORITHMS


def truncated_normal(mu: np.ndarray, sigma: float, low: float, high: float, rng: np.random.Generator) -> np.ndarray:
    """Samples of N(mu, sigma^2) truncated to [low, high], by rejection (falls back to clipping)."""
    out = np.array(mu, dtype=np.float64)
    todo = np.ones(out.shape, dtype=bool)
    for _ in range(100):
        draw = rng.normal(mu, sigma)
        ok = todo & (draw >= low) & (draw <= high)
        out[ok] = draw[ok]
        todo &= ~ok
        if not todo.any():
            return out
    return np.clip(out, low, high)


class _InvertingGradientClip(th.autograd.Function):
    """Clip to [-1, 1] forward; backward, scale each gradient by the room left in the direction it
    pushes (Hausknecht and Stone 2016, "inverting gradients"), and reverse it beyond the bounds."""

    @staticmethod
    def forward(ctx: Any, x: th.Tensor) -> th.Tensor:
        ctx.save_for_backward(x)
        return x.clamp(-1.0, 1.0)

    @staticmethod
    def backward(ctx: Any, grad: th.Tensor) -> th.Tensor:
        (x,) = ctx.saved_tensors
        # gradient descent moves x along -grad: up where grad < 0, with room (1 - x) / 2 to the top
        room = th.where(grad < 0, (1.0 - x) / 2.0, (x + 1.0) / 2.0)
        return grad * room


class InvertingGradientClip(th.nn.Module):
    """The actor's output bound in place of tanh: an action at a bound can always leave it again.

    A tanh output saturates: once the critic has pushed an action to a bound, the pre-activation runs
    far past it and the gradient through tanh vanishes, so the actor can no longer move that action
    whatever the critic learns later. Here the output is the clipped pre-activation, and the gradient
    shrinks as the action approaches the bound it is pushed towards and turns back beyond it.
    """

    def forward(self, x: th.Tensor) -> th.Tensor:
        return _InvertingGradientClip.apply(x)


class BoundedActor(Actor):
    """SB3's deterministic actor with `InvertingGradientClip` as its output instead of tanh."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.mu[-1] = InvertingGradientClip()


class BoundedActorPolicy(TD3Policy):
    """TD3/DDPG's MLP policy with a `BoundedActor` (and its target) in place of the tanh actor."""

    def make_actor(self, features_extractor: Any = None) -> Actor:
        actor_kwargs = self._update_features_extractor(self.actor_kwargs, features_extractor)
        return BoundedActor(**actor_kwargs).to(self.device)


class BaselineReplayBuffer(ReplayBuffer):
    """A replay buffer that subtracts a moving baseline from the rewards of every sampled batch.

    As AMC's reference: each transition stores its episode's final reward; at every sample the baseline
    moves towards the batch's mean reward (`alpha` weights the newest batch) and is subtracted from the
    whole batch, so all stored episodes are compared on one scale (a baseline fixed when an episode is
    stored would turn each reward into "better than the last few episodes", which is mostly noise). The
    baseline is pickled with the buffer, so a resumed search continues it.
    """

    alpha: float = 0.5
    baseline: float | None = None

    def _get_samples(self, batch_inds: np.ndarray, env: VecNormalize | None = None) -> ReplayBufferSamples:
        samples = super()._get_samples(batch_inds, env)
        mean = float(samples.rewards.mean())
        self.baseline = mean if self.baseline is None else self.baseline + self.alpha * (mean - self.baseline)
        return samples._replace(rewards=samples.rewards - self.baseline)


class AMCMixin:
    """AMC's per-network learning rates and warm-up for an SB3 off-policy algorithm.

    Args (keyword, besides the algorithm's own):
        actor_lr: the actor's learning rate (AMC: 1e-4); SB3's single `learning_rate` is not used.
        critic_lr: the critic's (and SAC's entropy coefficient's) learning rate (AMC: 1e-3).
        warmup_episodes: episodes of uniform random actions before any training (AMC: 100); SB3's
            `learning_starts`, counted in steps, is set from it by `make_agent`.

    Constructor arguments are instance attributes, so they round-trip through SB3's `save` / `load`.
    """

    def __init__(self, *args: Any, actor_lr: float = 1e-4, critic_lr: float = 1e-3, warmup_episodes: int = 100,
                 **kwargs: Any) -> None:
        self.actor_lr, self.critic_lr, self.warmup_episodes = actor_lr, critic_lr, warmup_episodes
        kwargs.setdefault("learning_rate", critic_lr)  # SB3 needs one; `_update_learning_rate` sets both
        super().__init__(*args, **kwargs)

    def _update_learning_rate(self, optimizers: list[th.optim.Optimizer] | th.optim.Optimizer) -> None:
        if not isinstance(optimizers, list):
            optimizers = [optimizers]
        # TD3/DDPG pass [actor, critic]; SAC passes [actor, critic] plus the entropy optimizer
        rates = [self.actor_lr, self.critic_lr] + [self.critic_lr] * (len(optimizers) - 2)
        for optimizer, lr in zip(optimizers, rates):
            update_learning_rate(optimizer, lr)
        self.logger.record("train/actor_lr", self.actor_lr)
        self.logger.record("train/critic_lr", self.critic_lr)


class TruncatedNormalExploration:
    """AMC's exploration for a deterministic actor: after warm-up, actions are drawn from a normal around
    the actor's action truncated to the action space, with sigma = sigma0 * sigma_decay^(episodes after
    warm-up). SB3's `ActionNoise` cannot see the actor's action, so `_sample_action` is overridden.

    Args (keyword): sigma0 (AMC: 0.5, in action units), sigma_decay (AMC: 0.95 per episode).
    """

    def __init__(self, *args: Any, sigma0: float = 0.5, sigma_decay: float = 0.95, **kwargs: Any) -> None:
        self.sigma0, self.sigma_decay = sigma0, sigma_decay
        super().__init__(*args, **kwargs)

    def exploration_sigma(self) -> float:
        """Standard deviation of the exploration noise for the current episode (action units)."""
        return self.sigma0 * self.sigma_decay ** max(0, self._episode_num - self.warmup_episodes)

    def _sample_action(
        self, learning_starts: int, action_noise: ActionNoise | None = None, n_envs: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        if self.num_timesteps < learning_starts:
            return super()._sample_action(learning_starts, action_noise, n_envs)
        mu, _ = self.predict(self._last_obs, deterministic=True)
        low, high = self.action_space.low, self.action_space.high
        action = truncated_normal(mu, self.exploration_sigma(), low, high, self._noise_rng).astype(np.float32)
        return action, self.policy.scale_action(action)

    def set_random_seed(self, seed: int | None = None) -> None:
        super().set_random_seed(seed)
        self._noise_rng = np.random.default_rng(seed)

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_noise_rng"]


class AMCDDPG(TruncatedNormalExploration, AMCMixin, DDPG):
    """DDPG as in AMC (the default)."""


class AMCTD3(TruncatedNormalExploration, AMCMixin, TD3):
    """TD3 with AMC's exploration, learning rates and warm-up."""


class AMCSAC(AMCMixin, SAC):
    """SAC with AMC's learning rates and warm-up; it explores with its own stochastic policy."""


AGENTS: dict[str, type[OffPolicyAlgorithm]] = dict(zip(ALGORITHMS, (AMCDDPG, AMCTD3, AMCSAC)))


def make_agent(
    algo: str,
    env: Any,
    n_steps_per_episode: int,
    *,
    warmup_episodes: int,
    replay_episodes: int = 100,
    hidden: int = 300,
    tau: float = 0.01,
    gamma: float = 1.0,
    batch_size: int = 64,
    seed: int = 0,
    device: str = "cpu",
    **amc: Any,
) -> OffPolicyAlgorithm:
    """An SB3 agent with AMC's reference hyper-parameters (He et al., ECCV 2018, section 4 and the reference
    code): actor and critic 300-300, tau 0.01, discount 1, batch 64, replay of 100 episodes.

    Training happens after every episode, one gradient step per stored transition
    (`train_freq=(1, "episode")`, `gradient_steps=-1`); the replay buffer holds `replay_episodes`
    episodes and centres sampled rewards on a moving baseline; the first `warmup_episodes` episodes act
    uniformly at random and do not train. `amc` passes AMC's own knobs to the algorithm's constructor
    (`actor_lr`, `critic_lr`, and for ddpg / td3 `sigma0`, `sigma_decay`; defaults in `AMCMixin` and
    `TruncatedNormalExploration`).
    """
    if algo not in AGENTS:
        raise ValueError(f"unknown algorithm {algo!r}; choose one of {', '.join(AGENTS)}")
    cls = AGENTS[algo]
    return cls(
        "MlpPolicy" if algo == "sac" else BoundedActorPolicy,
        env,
        buffer_size=replay_episodes * n_steps_per_episode,
        learning_starts=warmup_episodes * n_steps_per_episode,
        warmup_episodes=warmup_episodes,
        batch_size=batch_size,
        tau=tau,
        gamma=gamma,
        train_freq=(1, "episode"),
        gradient_steps=-1,
        replay_buffer_class=BaselineReplayBuffer,
        policy_kwargs={"net_arch": {"pi": [hidden, hidden], "qf": [hidden, hidden]}},
        seed=seed,
        device=device,
        verbose=0,
        **amc,
    )
