"""Policy-search baselines the AMC agent must beat: uniform, random search, sensitivity analysis and
SPDY-style dynamic programming.

Every baseline returns kept channel counts that meet the budget the way the agent's do (cost <= budget,
and, except `uniform`, using it up until no group can keep one more channel), scored by the same fast
evaluation (select, re-fit, re-estimate BatchNorm, val accuracy, and the selection-split accuracy when the task
has that split), and reports how many fast evaluations it used: the agent uses one per episode. Random search
picks the best of many, so it ends with the agent's final selection (`agents.selection`).

`sensitivity` and `dp` rank groups from one `sensitivity_table` (val accuracy and loss with one group
pruned at a time); pass the same table to both to measure it once.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
from tqdm import tqdm

from agents.config import SearchConfig
from agents.selection import DEFAULT_TOP, FinalSelection, select_final
from amc.engine.budget import (
    Budget,
    CostFn,
    allowed_counts,
    check_reachable,
    cost_function,
    ratio_counts,
    uniform_counts,
)
from amc.errors import AmcError
from amc.policy import Policy
from amc.reward import Evaluation, Task
from envs.channel_pruning import ChannelPruningEnv

DEFAULT_RATIOS: tuple[float, ...] = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
DEFAULT_BINS = 1000


@dataclass
class BaselineResult:
    """A baseline's policy: kept channels per group `counts` [G], their val accuracy in [0, 1] and mean
    cross-entropy, the number of fast evaluations spent finding it, wall-clock seconds, the accuracy on the
    selection split (None when the task has none) and, for random search, its final selection."""

    method: str
    counts: np.ndarray
    val_accuracy: float
    val_loss: float
    evaluations: int
    seconds: float
    select_accuracy: float | None = None
    selection: FinalSelection | None = None

    def to_policy(self, task: Task, budget: Budget, **extra: Any) -> Policy:
        """The amc policy of these counts, with method, val (and selection-split) accuracy, evaluations and
        `extra` as extra fields."""
        if self.select_accuracy is not None:
            extra = {**extra, "select_accuracy": self.select_accuracy}
        return Policy.from_counts(task.pruner, task.model.spec, self.counts, budget, method=self.method,
                                  **extra, val_accuracy=self.val_accuracy, evaluations=self.evaluations)


@dataclass
class SensitivityTable:
    """Val accuracy and loss with ONE group pruned and every other group whole.

    `counts[g, r]` is group g's kept channels at `ratios[r]` (ascending, clipped to the lower bound
    `lbound`); `accuracy` and `loss` [G, R] are the evaluations of those models and `dense` that of the
    unpruned one. `evaluations` counts the distinct models evaluated (at most G*R + 1: ratios that round
    to the same count are evaluated once); `seconds` is wall-clock.
    """

    ratios: tuple[float, ...]
    lbound: float
    counts: np.ndarray
    accuracy: np.ndarray
    loss: np.ndarray
    dense: Evaluation
    evaluations: int
    seconds: float


def _budget_target(task: Task, budget: Budget, lbound: float) -> tuple[CostFn, float]:
    """The budget's cost function and absolute target (MACs or parameters)."""
    if budget.kind == "latency":
        raise AmcError("latency budgets are not supported by baselines yet; pass a flops or params budget")
    cost = cost_function(task.pruner, budget.kind)
    return cost, check_reachable(task.pruner, cost, budget, lbound)


def _grid(ratios: Sequence[float]) -> tuple[float, ...]:
    grid = tuple(sorted({float(r) for r in ratios}))
    if not grid or not all(0 < r <= 1 for r in grid):
        raise AmcError(f"sensitivity ratios {list(ratios)} must be a non-empty list of preserve ratios in (0, 1]")
    return grid


def _evaluate(task: Task, counts: np.ndarray, method: str, evaluations: int, started: float) -> BaselineResult:
    val, select = task.evaluator.rescore(counts)
    return BaselineResult(method, counts, val.accuracy, val.loss, evaluations, time.monotonic() - started,
                          None if select is None else select.accuracy)


def uniform(task: Task, budget: Budget, lbound: float = 0.0) -> BaselineResult:
    """The same preserve ratio for every group, as large as the budget allows; one evaluation."""
    started = time.monotonic()
    cost, target = _budget_target(task, budget, lbound)
    return _evaluate(task, uniform_counts(task.pruner, cost, target), "uniform", 1, started)


def random_search(task: Task, budget: Budget, episodes: int, seed: int, reward: str = "acc",
                  lbound: float = SearchConfig.lbound, rbound: float = SearchConfig.rbound,
                  select_top: int = DEFAULT_TOP) -> BaselineResult:
    """`episodes` episodes of uniformly random actions through the agent's own environment (same action
    wall, same reward). The final policy is chosen as the agent's (`agents.selection.select_final`): the most
    accurate on the selection split of the `select_top` best distinct rewards (without a selection split: the
    best reward). One evaluation per episode, plus `select_top` for the final selection."""
    started = time.monotonic()
    _budget_target(task, budget, lbound)
    if reward == "latency":
        raise AmcError("the latency reward is not supported by baselines yet; pass --reward acc, flops or params")
    if episodes < 1:
        raise AmcError(f"random search needs at least one episode, got --episodes {episodes}")
    env = ChannelPruningEnv(task.pruner, task.evaluator, budget, reward=reward, lbound=lbound, rbound=rbound)
    rng = np.random.default_rng(seed)
    best: dict = {"reward": -math.inf}
    scored = []
    # a bar on a terminal only (disable=None), as every long step of amc
    for episode in tqdm(range(1, episodes + 1), desc="random search", unit="ep", disable=None, leave=False):
        env.reset()
        terminated = False
        while not terminated:
            _, _, terminated, _, info = env.step(rng.uniform(0.0, 1.0, size=1))
        scored.append((np.array(info["counts"], dtype=np.int64), info["reward"], episode))
        if info["reward"] > best["reward"]:
            best = info
    selection = select_final(task.evaluator, scored, select_top)
    if selection is None:
        return BaselineResult("random", np.array(best["counts"], dtype=np.int64), best["accuracy"], best["loss"],
                              episodes, time.monotonic() - started)
    chosen = selection.best
    return BaselineResult("random", np.array(chosen.counts, dtype=np.int64), chosen.val_accuracy, chosen.val_loss,
                          episodes + len(selection.candidates), time.monotonic() - started, chosen.select_accuracy,
                          selection)


def sensitivity_table(task: Task, ratios: Sequence[float] = DEFAULT_RATIOS,
                      lbound: float = SearchConfig.lbound) -> SensitivityTable:
    """Evaluate the model with each group alone pruned to each ratio (see `SensitivityTable`); made once per
    task, ratios and lower bound (kept in `task.cache`)."""
    started = time.monotonic()
    grid = _grid(ratios)
    key = ("sensitivity_table", grid, lbound)
    if key in task.cache:
        return task.cache[key]
    full = task.pruner.channels
    cache: dict[tuple[int, ...], Evaluation] = {}

    def evaluate(counts: np.ndarray) -> Evaluation:
        key = tuple(counts.tolist())
        if key not in cache:
            cache[key] = task.evaluator(counts)
        return cache[key]

    dense = evaluate(full)
    counts = np.stack([ratio_counts(task.pruner, r, lbound) for r in grid], axis=1)  # [G, R]
    accuracy, loss = np.empty(counts.shape), np.empty(counts.shape)
    for g, r in tqdm(list(np.ndindex(*counts.shape)), desc="sensitivity of each group", unit="policy", disable=None,
                     leave=False):
        trial = full.copy()
        trial[g] = counts[g, r]
        result = evaluate(trial)
        accuracy[g, r], loss[g, r] = result.accuracy, result.loss
    table = SensitivityTable(grid, lbound, counts, accuracy, loss, dense, len(cache), time.monotonic() - started)
    task.cache[key] = table
    return table


def _table(task: Task, ratios: Sequence[float], lbound: float, table: SensitivityTable | None) -> SensitivityTable:
    if table is None:
        return sensitivity_table(task, ratios, lbound)
    if table.ratios != _grid(ratios) or table.lbound != lbound:
        raise ValueError(f"the table was made for ratios {table.ratios} and lbound {table.lbound}, "
                         f"not {_grid(ratios)} and {lbound}")
    return table


def _candidates(table: SensitivityTable, full: np.ndarray, values: np.ndarray,
                dense: float) -> tuple[np.ndarray, np.ndarray]:
    """Candidate counts [G, R+1] (the grid, then the whole group; ascending) and their `values`."""
    n = len(full)
    return (np.concatenate([table.counts, full[:, None]], axis=1),
            np.concatenate([values, np.full((n, 1), dense)], axis=1))


def _check_grid(cost: CostFn, target: float, smallest: np.ndarray, table: SensitivityTable, budget: Budget) -> None:
    if float(cost(smallest)) > target:
        raise AmcError(f"the smallest sensitivity ratio {table.ratios[0]:g} cannot meet a {budget.kind} budget of "
                       f"{budget.ratio:g}; add smaller ratios (down to --lbound {table.lbound:g})")


def fill_budget(counts: np.ndarray, allowed: Sequence[np.ndarray], cost: CostFn, target: float,
                order: Sequence[int]) -> np.ndarray:
    """Spend the budget left over: raise each group in `order`, one allowed count at a time (`allowed_counts`:
    every channel, or the channel-rounding grid), while the cost stays <= `target` (up to whole). Afterwards no
    group can keep more channels, as with the agent's action wall. `counts` [G] must already fit."""
    counts = counts.copy()
    for g in order:
        candidates = allowed[g][allowed[g] >= counts[g]]
        trial = np.repeat(counts[None, :], len(candidates), axis=0)
        trial[:, g] = candidates
        # the cost grows with every count, so the largest fitting count is where one-by-one raising stops
        counts[g] = candidates[cost(trial) <= target].max()
    return counts


def _most_sensitive_first(harm: np.ndarray) -> np.ndarray:
    """Group order by mean harm over the ratio grid (`harm` [G, R]), most harmed first."""
    return np.argsort(-harm.mean(axis=1), kind="stable")


def sensitivity(task: Task, budget: Budget, ratios: Sequence[float] = DEFAULT_RATIOS, lbound: float = SearchConfig.lbound,
                *, table: SensitivityTable | None = None) -> BaselineResult:
    """Classic sensitivity analysis: a tolerated accuracy drop d gives every group the smallest ratio
    whose drop (alone, from `sensitivity_table`) is <= d; the smallest d whose policy meets the budget is
    taken, then the leftover budget goes to the most sensitive groups first (`fill_budget`).
    Evaluations: the table's (G*R + 1 at most) and one for the result.
    """
    # a shared table's time counts too: it is part of what the method costs
    started = time.monotonic() - (table.seconds if table is not None else 0.0)
    cost, target = _budget_target(task, budget, lbound)
    table = _table(task, ratios, lbound, table)
    full = task.pruner.channels
    counts, accuracy = _candidates(table, full, table.accuracy, table.dense.accuracy)
    drops = np.maximum(table.dense.accuracy - accuracy, 0.0)  # [G, R+1]; a gain counts as no drop
    _check_grid(cost, target, counts[:, 0], table, budget)
    # tolerating more never picks a larger count, so the cost falls with d: the first fitting threshold
    # among the table's distinct drops is the smallest (every d is tried at once: the cost is vectorised)
    thresholds = np.unique(drops)
    first_admissible = np.argmax(drops[None, :, :] <= thresholds[:, None, None], axis=2)  # [T, G]
    policies = np.take_along_axis(counts[None, :, :], first_admissible[:, :, None], axis=2)[:, :, 0]
    chosen = policies[np.argmax(cost(policies) <= target)]
    order = _most_sensitive_first(drops[:, :-1])
    filled = fill_budget(chosen, allowed_counts(task.pruner, lbound), cost, target, order)
    return _evaluate(task, filled, "sensitivity", table.evaluations + 1, started)


def dp_allocate(errors: np.ndarray, savings: np.ndarray, required: int) -> np.ndarray | None:
    """One candidate per group minimising the summed error subject to summed savings >= `required`.

    `errors` [G, K] (any floats), `savings` [G, K] non-negative ints (budget units, e.g. bins). Exact
    dynamic programming over groups with the savings axis capped at `required`: O(G * K * required).
    Returns the chosen candidate index per group [G], or None when no choice saves enough.
    """
    n_groups, n_cand = errors.shape
    states = required + 1
    best = np.full(states, np.inf)
    best[0] = 0.0
    back_k = np.zeros((n_groups, states), dtype=np.int64)
    back_state = np.zeros((n_groups, states), dtype=np.int64)
    for g in range(n_groups):
        new = np.full(states, np.inf)
        for k in range(n_cand):
            s = int(savings[g, k])
            reached = np.full(states, np.inf)
            source = np.zeros(states, dtype=np.int64)
            if s < required:
                reached[s:required] = best[: required - s]
                source[s:required] = np.arange(required - s)
            # every state within s of the cap reaches it: keep the cheapest
            low = max(required - s, 0)
            source[required] = low + int(np.argmin(best[low:]))
            reached[required] = best[source[required]]
            reached += errors[g, k]
            better = reached < new
            new[better] = reached[better]
            back_k[g, better], back_state[g, better] = k, source[better]
        best = new
    if not np.isfinite(best[required]):
        return None
    choice = np.zeros(n_groups, dtype=np.int64)
    state = required
    for g in reversed(range(n_groups)):
        choice[g] = back_k[g, state]
        state = back_state[g, state]
    return choice


@dataclass
class DpProblem:
    """The additive model `dp` optimises: per group g and candidate k, kept channels `counts` [G, K],
    error `errors` [G, K] (val loss increase with g alone pruned) and `savings` [G, K] (cost removed with
    g alone pruned, in bins of the dense cost, rounded down); `required` bins must be saved."""

    counts: np.ndarray
    errors: np.ndarray
    savings: np.ndarray
    required: int


def dp_problem(task: Task, cost: CostFn, target: float, table: SensitivityTable, bins: int = DEFAULT_BINS) -> DpProblem:
    """The DP's candidates, errors and discretized savings for budget `target` (see `DpProblem`)."""
    full = task.pruner.channels
    counts, loss = _candidates(table, full, table.loss, table.dense.loss)
    n_groups, n_cand = counts.shape
    trials = np.broadcast_to(full, (n_groups, n_cand, n_groups)).copy()
    trials[np.arange(n_groups), :, np.arange(n_groups)] = counts
    dense = float(cost(full))
    savings = np.floor((dense - cost(trials)) * bins / dense).astype(np.int64)
    # the 1e-9 absorbs float noise such as 0.7 * 1000 = 700.0000000000001; the exact check guards it
    required = max(math.ceil((dense - target) * bins / dense - 1e-9), 0)
    return DpProblem(counts, loss - table.dense.loss, savings, required)


def dp(task: Task, budget: Budget, ratios: Sequence[float] = DEFAULT_RATIOS, lbound: float = SearchConfig.lbound,
       *, bins: int = DEFAULT_BINS, table: SensitivityTable | None = None) -> BaselineResult:
    """SPDY-style allocation: minimise the summed per-group loss increase under the additive cost model
    (`dp_problem`, `dp_allocate`). The additive model over-states the savings of groups that cut the same
    layer, so when the exact cost exceeds the budget the required savings are raised by bisection until
    it fits; then the leftover budget goes to the most loss-sensitive groups first (`fill_budget`).
    Evaluations: the table's (G*R + 1 at most) and one for the result.
    """
    # a shared table's time counts too: it is part of what the method costs
    started = time.monotonic() - (table.seconds if table is not None else 0.0)
    cost, target = _budget_target(task, budget, lbound)
    table = _table(task, ratios, lbound, table)
    problem = dp_problem(task, cost, target, table, bins)
    smallest = problem.counts[:, 0]
    _check_grid(cost, target, smallest, table, budget)
    rows = np.arange(len(smallest))

    def solve(required: int) -> np.ndarray:
        choice = dp_allocate(problem.errors, problem.savings, required)
        return smallest if choice is None else problem.counts[rows, choice]

    most = int(problem.savings.max(axis=1).sum())
    chosen = solve(problem.required)
    if float(cost(chosen)) > target:
        # invariant: requiring `low` bins does not fit; `chosen` (for `high`) does. The exact cost need not
        # fall monotonically with the requirement, so this finds a fitting requirement, not the smallest.
        low, high, chosen = problem.required, most + 1, smallest
        while high - low > 1:
            mid = (low + high) // 2
            trial = solve(mid)
            if float(cost(trial)) <= target:
                high, chosen = mid, trial
            else:
                low = mid
    order = _most_sensitive_first(problem.errors[:, :-1])
    filled = fill_budget(chosen, allowed_counts(task.pruner, lbound), cost, target, order)
    return _evaluate(task, filled, "dp", table.evaluations + 1, started)


BASELINES: dict[str, Callable[..., BaselineResult]] = {
    "uniform": uniform,
    "random": random_search,
    "sensitivity": sensitivity,
    "dp": dp,
}


def run_baseline(method: str, task: Task, budget: Budget, *, episodes: int = 100, seed: int = 0,
                 lbound: float = SearchConfig.lbound, rbound: float = SearchConfig.rbound, reward: str = "acc",
                 ratios: Sequence[float] = DEFAULT_RATIOS, bins: int = DEFAULT_BINS) -> BaselineResult:
    """Run baseline `method` (a key of `BASELINES`) with the arguments that method takes: `episodes`,
    `seed`, `reward`, `rbound` for random search; `ratios` for sensitivity and dp; `bins` for dp."""
    options: dict[str, dict] = {
        "uniform": {"lbound": lbound},
        "random": {"episodes": episodes, "seed": seed, "reward": reward, "lbound": lbound, "rbound": rbound},
        "sensitivity": {"ratios": ratios, "lbound": lbound},
        "dp": {"ratios": ratios, "lbound": lbound, "bins": bins},
    }
    if method not in BASELINES:
        raise AmcError(f"unknown baseline {method!r}; choose one of {', '.join(BASELINES)}")
    return BASELINES[method](task, budget, **options[method])
