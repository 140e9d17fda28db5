"""Callbacks of an AMC search, combined in SB3's `CallbackList`: one relabels rewards, one records episodes.

SB3 calls, per episode: `_on_step` after each environment step; `_on_rollout_end` once the episode's last
transition is in the replay buffer and before training on it; `_on_rollout_start` when the next episode
starts, i.e. after training. AMC's relabelling relies on that order (a test pins it).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback


class RewardRelabelCallback(BaseCallback):
    """Gives every transition of an episode the episode's final reward (AMC, section 3.4).

    The environment pays the reward at the last step only; AMC stores it on every step of the episode
    (the replay buffer subtracts a moving baseline when it samples). `n_steps` is the episode length.
    """

    def __init__(self, n_steps: int) -> None:
        super().__init__()
        self.n_steps = n_steps
        self._reward: float | None = None

    def _on_step(self) -> bool:
        for done, info in zip(self.locals["dones"], self.locals["infos"]):
            if done:
                self._reward = float(info["reward"])
        return True

    def _on_rollout_end(self) -> None:
        if self._reward is None:
            return
        reward, self._reward = self._reward, None
        buffer = self.model.replay_buffer
        last = (buffer.pos - 1 - np.arange(self.n_steps)) % buffer.buffer_size
        buffer.rewards[last, 0] = reward


class EpisodeRecorderCallback(BaseCallback):
    """Reports finished episodes and the moments to checkpoint, and stops learning on request.

    `on_episode(info)` is called with the final step's info when an episode ends, before training on it;
    `on_trained()` when the agent has trained on it (at the start of the next rollout): the moment to
    checkpoint. Setting `stop_requested` (e.g. from a Ctrl-C handler) ends learning after the current step.
    """

    def __init__(self, on_episode: Callable[[dict], None], on_trained: Callable[[], None]) -> None:
        super().__init__()
        self.on_episode, self.on_trained = on_episode, on_trained
        self.stop_requested = False
        self._episodes = 0

    def _on_rollout_start(self) -> None:
        if self._episodes > 0:
            self.on_trained()

    def _on_step(self) -> bool:
        for done, info in zip(self.locals["dones"], self.locals["infos"]):
            if done:
                self._episodes += 1
                self.on_episode(info)
        return not self.stop_requested
