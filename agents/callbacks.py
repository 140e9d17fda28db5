"""Callbacks of an AMC search: every transition gets its episode's final reward."""

from __future__ import annotations

from typing import Callable

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback


class EpisodeRewardCallback(BaseCallback):
    """Gives every transition of an episode the episode's final reward.

    The environment pays the reward at the last step only; AMC stores it on every step of the episode
    (the replay buffer subtracts a moving baseline when it samples). `on_episode(info)` is called with
    the final step's info when an episode ends, before its transitions are relabelled and before
    training; `on_trained()` when the agent has trained on it (at the start of the next rollout): the
    moment to checkpoint.
    """

    def __init__(self, n_steps: int, on_episode: Callable[[dict], None], on_trained: Callable[[], None]) -> None:
        super().__init__()
        self.n_steps, self.on_episode, self.on_trained = n_steps, on_episode, on_trained
        self._reward: float | None = None
        self._episodes = 0

    def _on_rollout_start(self) -> None:
        if self._episodes > 0:
            self.on_trained()

    def _on_step(self) -> bool:
        for done, info in zip(self.locals["dones"], self.locals["infos"]):
            if done:
                self._reward = float(info["reward"])
                self._episodes += 1
                self.on_episode(info)
        return not self.stop_requested

    stop_requested = False  # set (e.g. by a Ctrl-C handler) to end learning after the current step

    def _on_rollout_end(self) -> None:
        if self._reward is None:
            return
        reward, self._reward = self._reward, None
        buffer = self.model.replay_buffer
        last = (buffer.pos - 1 - np.arange(self.n_steps)) % buffer.buffer_size
        buffer.rewards[last, 0] = reward
