"""Gymnasium environments of amc. Importing this package registers `amc/ChannelPruning-v0`."""

import gymnasium

from envs.channel_pruning import ChannelPruningEnv

gymnasium.register(id="amc/ChannelPruning-v0", entry_point="envs.channel_pruning:ChannelPruningEnv")

__all__ = ["ChannelPruningEnv"]
