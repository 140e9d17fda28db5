"""Gymnasium environments of amc. Importing this package registers `amc/ChannelPruning-v0`.

`REWARDS` names the environment's rewards; `ChannelPruningEnv` is imported on first use, so the command
line can offer the names without loading torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import gymnasium

REWARDS: tuple[str, ...] = ("acc", "flops", "params", "latency")

gymnasium.register(id="amc/ChannelPruning-v0", entry_point="envs.channel_pruning:ChannelPruningEnv")

__all__ = ["REWARDS", "ChannelPruningEnv"]

if TYPE_CHECKING:
    from envs.channel_pruning import ChannelPruningEnv  # noqa: F401


def __getattr__(name: str) -> Any:
    if name == "ChannelPruningEnv":
        from envs.channel_pruning import ChannelPruningEnv

        return ChannelPruningEnv
    raise AttributeError(f"module 'envs' has no attribute {name!r}")
