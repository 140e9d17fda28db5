"""Policy-search baselines on the embedded digits model: budgets met, evaluations counted, DP optimal."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest

from agents.baselines import (
    BASELINES,
    BaselineResult,
    dp,
    dp_allocate,
    dp_problem,
    random_search,
    run_baseline,
    sensitivity,
    sensitivity_table,
    uniform,
)
from amc.engine.budget import Budget, allowed_counts, check_reachable, cost_function, min_counts
from amc.errors import AmcError

BUDGETS = [Budget("flops", 0.5), Budget("flops", 0.3), Budget("params", 0.5)]


@pytest.fixture(scope="module")
def task(digits_task):
    return digits_task


@pytest.fixture(scope="module")
def table(task):
    return sensitivity_table(task)


def brute_force(errors: np.ndarray, savings: np.ndarray, required: int) -> float:
    """The minimal summed error over every assignment that saves enough (inf if none does)."""
    rows = np.arange(len(errors))
    choices = itertools.product(range(errors.shape[1]), repeat=len(errors))
    sums = [(errors[rows, c].sum(), savings[rows, c].sum()) for c in choices]
    return min((e for e, s in sums if s >= required), default=np.inf)


@pytest.mark.parametrize("budget", BUDGETS, ids=lambda b: f"{b.kind}{b.ratio}")
def test_every_method_meets_the_budget(task, table, budget):
    pruner = task.pruner
    cost = cost_function(pruner, budget.kind)
    target = check_reachable(pruner, cost, budget, 0.2)
    results = {
        "uniform": uniform(task, budget),
        "random": random_search(task, budget, episodes=5, seed=0),
        "sensitivity": sensitivity(task, budget, table=table),
        "dp": dp(task, budget, table=table),
    }
    for name, result in results.items():
        used = float(cost(result.counts)) / target
        assert used <= 1.0, name
        assert used >= (0.9 if name == "uniform" else 0.97), name
        assert np.all(result.counts <= pruner.channels) and np.all(result.counts >= min_counts(pruner)), name
        assert result.method == name and 0 <= result.val_accuracy <= 1 and result.seconds > 0
    assert results["uniform"].evaluations == 1
    assert results["random"].evaluations == 5 + len(results["random"].selection.candidates)
    assert table.evaluations == len(pruner.names) * len(table.ratios) + 1  # no ratio rounds to a repeated count here
    for name in ("sensitivity", "dp"):
        counts = results[name].counts
        assert results[name].evaluations == table.evaluations + 1
        # the leftover budget is spent: no group can keep one more channel
        for g in np.flatnonzero(counts < pruner.channels):
            raised = counts.copy()
            raised[g] += 1
            assert cost(raised) > target, (name, g)


def test_random_search_counts_episodes_and_reproduces(task):
    class Counting:  # the evaluator, counting the policies the episodes score
        def __init__(self, inner):
            self.inner, self.calls = inner, []

        def __call__(self, counts):
            self.calls.append(counts.copy())
            return self.inner(counts)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    counting = Counting(task.evaluator)
    budget = Budget("flops", 0.5)
    first = random_search(replace(task, evaluator=counting), budget, episodes=7, seed=3)
    # one evaluation per episode, then the final selection re-scores the best distinct ones
    assert len(counting.calls) == 7 and first.evaluations == 7 + len(first.selection.candidates)
    again = random_search(task, budget, episodes=7, seed=3)
    assert np.array_equal(first.counts, again.counts) and first.val_accuracy == again.val_accuracy
    other = random_search(task, budget, episodes=7, seed=4)
    assert not np.array_equal(first.counts, other.counts)


def test_dp_allocate_is_optimal_on_random_problems():
    rng = np.random.default_rng(0)
    for _ in range(30):
        groups, candidates = rng.integers(1, 5), rng.integers(1, 5)
        errors = rng.normal(size=(groups, candidates))
        savings = rng.integers(0, 30, size=(groups, candidates))
        required = int(rng.integers(0, 60))
        choice = dp_allocate(errors, savings, required)
        expected = brute_force(errors, savings, required)
        if choice is None:
            assert expected == np.inf
        else:
            rows = np.arange(groups)
            assert savings[rows, choice].sum() >= required
            assert errors[rows, choice].sum() == pytest.approx(expected)


def test_dp_is_optimal_on_the_digits_table(task):
    small = sensitivity_table(task, ratios=(0.3, 0.5, 0.7))
    budget = Budget("flops", 0.4)
    cost = cost_function(task.pruner, budget.kind)
    problem = dp_problem(task, cost, check_reachable(task.pruner, cost, budget, 0.2), small)
    assert problem.counts.shape == (4, 4)  # 3 ratios and the whole group
    choice = dp_allocate(problem.errors, problem.savings, problem.required)
    rows = np.arange(4)
    assert problem.errors[rows, choice].sum() == pytest.approx(brute_force(problem.errors, problem.savings, problem.required))
    result = dp(task, budget, ratios=(0.3, 0.5, 0.7), table=small)
    assert cost(result.counts) <= budget.ratio * cost(task.pruner.channels)


def test_sensitivity_keeps_the_most_sensitive_group_when_the_budget_is_loose(task, table):
    drops = np.maximum(table.dense.accuracy - table.accuracy, 0.0)
    most = int(np.argmax(drops.mean(axis=1)))
    result = sensitivity(task, Budget("flops", 0.9), table=table)
    assert result.counts[most] >= table.counts[most, -1]


def test_run_baseline_and_errors(task, table):
    budget = Budget("params", 0.5)
    result = run_baseline("random", task, budget, episodes=2, seed=0)
    assert isinstance(result, BaselineResult) and result.evaluations == 2 + len(result.selection.candidates)
    assert set(BASELINES) == {"uniform", "random", "sensitivity", "dp"}
    policy = result.to_policy(task, budget)
    assert np.array_equal(policy.counts_for(task.pruner), result.counts) and policy.extra["method"] == "random"
    with pytest.raises(AmcError, match="unknown baseline"):
        run_baseline("greedy", task, budget)
    for method in BASELINES:
        with pytest.raises(AmcError, match="latency"):
            run_baseline(method, task, Budget("latency", 0.5))
    with pytest.raises(AmcError, match="smallest sensitivity ratio"):
        sensitivity(task, Budget("flops", 0.3), ratios=(0.8, 0.9))
    with pytest.raises(ValueError, match="table was made"):
        dp(task, budget, ratios=(0.5,), table=table)


@pytest.mark.parametrize("budget", BUDGETS[:2], ids=lambda b: f"{b.kind}{b.ratio}")
def test_every_method_keeps_multiples_of_the_channel_round(task, budget, monkeypatch):
    """With channel rounding every method's counts are multiples of 8 (or whole groups), within the budget, and
    the leftover budget is spent on the grid: no group can take its next allowed count."""
    monkeypatch.setattr(task.pruner, "channel_round", 8)
    monkeypatch.setattr(task, "cache", {})  # the sensitivity table of the unrounded grid does not apply
    pruner, cost = task.pruner, cost_function(task.pruner, budget.kind)
    target = check_reachable(pruner, cost, budget, 0.2)
    allowed = allowed_counts(pruner, 0.2)
    for name, result in {"uniform": uniform(task, budget), "sensitivity": sensitivity(task, budget),
                         "dp": dp(task, budget), "random": random_search(task, budget, episodes=3, seed=0)}.items():
        counts = result.counts
        assert all(c % 8 == 0 or c == full for c, full in zip(counts, pruner.channels)), (name, counts)
        assert float(cost(counts)) <= target, name
        if name in ("sensitivity", "dp"):
            for g in np.flatnonzero(counts < pruner.channels):
                raised = counts.copy()
                raised[g] = allowed[g][allowed[g] > counts[g]][0]
                assert cost(raised) > target, (name, g)
