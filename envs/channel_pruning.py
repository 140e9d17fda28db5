"""The AMC environment: walk a network's channel groups and choose how many channels each keeps."""

from __future__ import annotations

import math
from typing import Any, Callable

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from amc.engine.budget import (
    Budget,
    CostFn,
    allowed_counts,
    check_reachable,
    cost_function,
    min_counts,
    round_channels,
)
from amc.engine.cost import group_costs
from amc.engine.pruner import ChannelPruner
from amc.reward import Evaluation
from envs import REWARDS

N_FEATURES = 11


def _minmax(column: np.ndarray) -> np.ndarray:
    span = column.max() - column.min()
    return (column - column.min()) / span if span > 0 else np.zeros_like(column)


class ChannelPruningEnv(gym.Env):
    """Resource-constrained channel pruning of a trained network, one channel group per step (AMC).

    ## Episode
    Starts at the first prunable group (in execution order) and ends after the last: one step per group,
    `len(pruner.groups)` steps in all. There is no truncation.

    ## Observation
    `Box(0, 1, (11,), float32)`, AMC's layer embedding of the current group t (section 3.1). Costs are in the
    budget's unit (MACs, parameters or milliseconds); every feature is in [0, 1] by construction (no clip):

    | index | feature | source | scaling |
    |---|---|---|---|
    | 0 | t | position of the group in execution order | min-max over groups |
    | 1 | n | channels of the group | min-max over groups |
    | 2 | c | input channels of the layer producing the group | min-max over groups |
    | 3 | h | input height of that layer | min-max over groups |
    | 4 | w | input width of that layer | min-max over groups |
    | 5 | stride | of that layer | min-max over groups |
    | 6 | k | kernel size of that layer | min-max over groups |
    | 7 | cost | the group's share of the cost (layers it produces and feeds) | min-max over groups |
    | 8 | removed | cost removed by the actions so far | fraction of the dense cost |
    | 9 | rest | cost of the groups after t | fraction of the dense cost, at most 1 |
    | 10 | a_{t-1} | preserve ratio kept by the previous group (1 at t = 0) | kept / channels |

    ## Action
    `Box(0, 1, (1,), float32)`: a in [0, 1] is mapped to the preserve ratio lbound + a (rbound - lbound)
    of the group's channels. The *action wall* then bounds the channel count: at most what still lets
    the budget be met with every later group at its lower bound, and (with `fill_budget`) at least what
    the budget needs with every later group whole, so the finished policy never exceeds the budget and
    ends within one channel of it. The channel count actually kept is what the next state records.

    ## Reward
    0 until the last step, then, from the fast evaluation (select, re-fit, val accuracy) of the whole
    policy: `acc` accuracy; `flops` -error * log(MACs); `params` -error * log(params); `latency`
    -error * log(latency in microseconds). The final `info` holds the policy (`counts`), its `macs`,
    `params`, `cost_ratio`, `accuracy` and `reward`.

    ## Starting state
    `reset` starts every episode at group 0 with every group whole; nothing is random (the agent's
    exploration is the agent's). Stepping after the last group raises RuntimeError until `reset`.

    ## Arguments
    - `pruner`: the analysed model (`amc.engine.pruner.ChannelPruner`): groups, channels, cost model.
    - `evaluate`: kept counts [G] -> `Evaluation` (val accuracy and loss), e.g. `amc.reward.RewardEvaluator`.
    - `budget`: `Budget(kind, ratio)`; its kind is the unit of the state's costs and of the action wall.
    - `lbound`, `rbound`: the preserve-ratio range an action maps to (AMC: 0.2 and 1.0; `SearchConfig`).
    - `reward`: one of `envs.REWARDS`.
    - `fill_budget`: the action wall's lower bound (use the budget up); True in AMC.
    - `latency`: a latency table (`amc.engine.latency.LatencyTable`), needed by a latency budget or reward.

    ```
    gymnasium.make("amc/ChannelPruning-v0", pruner=pruner, evaluate=evaluator, budget=Budget("flops", 0.5),
                   lbound=0.2, rbound=1.0)
    ```

    Source: He et al., "AMC: AutoML for Model Compression and Acceleration on Mobile Devices", ECCV 2018
    (arXiv:1802.03494), sections 3.1 (state), 3.2 (action, action wall) and 3.3-3.4 (rewards).

    ## Version history
    - v0: AMC's environment with a continuous preserve-ratio action, verified channel groups and an exact
      cost model.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        pruner: ChannelPruner,
        evaluate: Callable[[np.ndarray], Evaluation],
        budget: Budget,
        *,
        lbound: float,
        rbound: float,
        reward: str = "acc",
        fill_budget: bool = True,
        latency: CostFn | None = None,
    ) -> None:
        if reward not in REWARDS:
            raise ValueError(f"unknown reward {reward!r}; choose one of {REWARDS}")
        if not 0 <= lbound < rbound <= 1:
            raise ValueError(f"need 0 <= lbound < rbound <= 1, got {lbound} and {rbound}")
        self.pruner, self.evaluate, self.budget = pruner, evaluate, budget
        self.reward_kind, self.lbound, self.rbound, self.fill_budget = reward, lbound, rbound, fill_budget
        self.latency = latency
        self.cost = cost_function(pruner, budget.kind, latency)
        self.target = check_reachable(pruner, self.cost, budget, lbound)
        self.full = pruner.channels.copy()
        self.lower = min_counts(pruner, lbound)
        self.allowed = allowed_counts(pruner, lbound)  # per group: every count, or the channel_round grid
        self.dense_cost = float(self.cost(self.full))
        self.group_cost = group_costs(self.cost, self.full)
        self.static = self._static_features()
        self.observation_space = spaces.Box(0.0, 1.0, (N_FEATURES,), np.float32)
        self.action_space = spaces.Box(0.0, 1.0, (1,), np.float32)
        self.t = 0
        self.counts = self.full.copy()

    @property
    def n_groups(self) -> int:
        return len(self.full)

    def _static_features(self) -> np.ndarray:
        rows = []
        for t, group in enumerate(self.pruner.groups):
            info = self.pruner.layers[group.name]
            rows.append([t, group.channels, info.in_channels, info.in_hw[0], info.in_hw[1],
                         info.stride, info.kernel, self.group_cost[t]])
        table = np.array(rows, dtype=np.float64)
        return np.stack([_minmax(col) for col in table.T], axis=1)

    def _observation(self) -> np.ndarray:
        t = min(self.t, self.n_groups - 1)
        removed = (self.dense_cost - float(self.cost(self.counts))) / self.dense_cost
        later = self.group_cost[t + 1 :].sum() / self.dense_cost
        previous = self.counts[t - 1] / self.full[t - 1] if t > 0 else 1.0
        features = np.concatenate([self.static[t], [removed, min(later, 1.0), previous]])
        # every feature is in [0, 1] by construction; no clip, so a mis-scaled one shows in the tests
        return features.astype(np.float32)

    def wall(self, t: int, wanted: int) -> int:
        """Channel count for group t nearest to `wanted` that keeps the budget reachable (see class doc)."""
        candidates = self.allowed[t]
        trial = np.repeat(self.counts[None, :], len(candidates), axis=0)
        trial[:, t] = candidates
        trial[:, t + 1 :] = self.lower[t + 1 :]
        feasible = candidates[self.cost(trial) <= self.target]
        high = int(feasible.max()) if len(feasible) else int(self.lower[t])
        low = int(self.lower[t])
        if self.fill_budget:
            trial[:, t + 1 :] = self.full[t + 1 :]
            enough = candidates[self.cost(trial) >= self.target]
            low = min(int(enough.min()), high) if len(enough) else high
        within = candidates[(candidates >= low) & (candidates <= high)]
        return int(within[np.argmin(np.abs(within - np.clip(wanted, low, high)))])

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.t = 0
        self.counts = self.full.copy()
        return self._observation(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self.t >= self.n_groups:
            raise RuntimeError("step() after the episode ended (every group has a count); call reset() first")
        a = float(np.clip(np.asarray(action, dtype=np.float64).reshape(-1)[0], 0.0, 1.0))
        ratio = self.lbound + a * (self.rbound - self.lbound)
        t = self.t
        self.counts[t] = self.wall(t, int(round_channels(ratio * self.full[t])))
        self.t += 1
        if self.t < self.n_groups:
            # later groups count as whole until they are decided
            return self._observation(), 0.0, False, False, {}
        return self._observation(), *self._finish()

    def _finish(self) -> tuple[float, bool, bool, dict]:
        result = self.evaluate(self.counts.copy())
        macs = int(self.pruner.cost.macs(self.counts))
        params = int(self.pruner.cost.params(self.counts))
        error = 1.0 - result.accuracy
        if self.reward_kind == "acc":
            reward = result.accuracy
        elif self.reward_kind == "flops":
            reward = -error * math.log(macs)
        elif self.reward_kind == "params":
            reward = -error * math.log(params)
        else:
            if self.latency is None:
                raise ValueError("the latency reward needs a latency table")
            reward = -error * math.log(1000.0 * float(self.latency(self.counts)))
        info = {
            "counts": self.counts.tolist(),
            "macs": macs,
            "params": params,
            "cost_ratio": float(self.cost(self.counts)) / self.dense_cost,
            "accuracy": result.accuracy,
            "loss": result.loss,
            "images": result.images,
            "measured_accuracy": result.accuracy if result.measured is None else result.measured,
            "reward": reward,
        }
        return float(reward), True, False, info
