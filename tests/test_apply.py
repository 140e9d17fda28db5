"""`apply_policy`: the pruned model is the one the search scored, and its file round-trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import amc
from amc.apply import apply_policy, choose_selection
from amc.engine.budget import Budget, uniform_counts
from amc.engine.pruner import ChannelPruner
from amc.errors import AmcError
from amc.models.pruned import PrunedModel, read_model_info
from amc.models.trained import load_trained_model
from amc.models.zoo import digits_checkpoint
from amc.policy import Policy


@pytest.fixture(scope="module")
def policy(digits_task) -> Policy:
    pruner = digits_task.pruner
    counts = uniform_counts(pruner, pruner.cost.macs, 0.5 * pruner.cost.macs(pruner.channels))
    return Policy.from_counts(pruner, "digits_cnn", counts, Budget("flops", 0.5), method="uniform")


def test_applied_model_is_the_evaluated_one(digits_task, policy):
    pruned = apply_policy(digits_task, policy)
    reference = digits_task.evaluator.prune(policy.counts_for(digits_task.pruner))
    x = digits_task.evaluator.val_x[:64]
    with torch.no_grad():
        torch.testing.assert_close(pruned.module(x), reference(x))  # same weights; layouts round differently
    assert pruned.base == "digits_cnn" and pruned.input_shape == (1, 8, 8)
    assert {name: len(idx) for name, idx in pruned.kept.items()} == {
        g.name: g.keep for g in policy.groups}


def test_saved_file_round_trips(digits_task, policy, tmp_path):
    pruned = apply_policy(digits_task, policy)
    info = pruned.save(tmp_path / "m.pt")
    assert info["macs"] == policy.predicted["macs"] and info["params"] == policy.predicted["params"]
    loaded = amc.load_model(tmp_path / "m.pt")
    again = PrunedModel.load(tmp_path / "m.pt")
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), pruned.module(x))
        torch.testing.assert_close(again.module(x), pruned.module(x))
    assert again.kept == pruned.kept and again.policy == policy.to_dict()
    assert read_model_info(tmp_path / "m.pt")["base"] == "digits_cnn"


def test_without_data_channels_come_from_weight_norms(policy):
    trained = load_trained_model("digits_cnn", digits_checkpoint(), input_shape=(1, 8, 8))
    pruner = ChannelPruner(trained.module, trained.input_shape, selection="l1")
    pruned = apply_policy((trained, pruner), policy)
    counts = policy.counts_for(pruner)
    assert [len(pruned.kept[n]) for n in pruner.names] == counts.tolist()
    assert np.array_equal(pruned.kept[pruner.names[0]], pruner.kept_indices(counts)[pruner.names[0]].tolist())


def test_selection_choice():
    assert choose_selection(None, None, has_data=True) == "ls"
    assert choose_selection("l2", "ls", has_data=True) == "l2"
    assert choose_selection(None, "bn", has_data=True) == "bn"
    assert choose_selection(None, None, has_data=False) == "l1"
    with pytest.warns(UserWarning, match="l1"):
        assert choose_selection(None, "ls", has_data=False) == "l1"
    with pytest.raises(AmcError, match="dataset"):
        choose_selection("ls", None, has_data=False)


def test_every_stage_holds_out_the_same_val_split(digits_task):
    """The search's reward split is the split `eval --split val` and fine-tuning use, and the one the embedded
    digits checkpoint was trained without: all of them call `split_train_val`."""
    from amc.data.split import split_train_val

    train_idx, val_idx = split_train_val(len(digits_task.dataset.train), None, 0)
    assert digits_task.val_idx.tolist() == val_idx.tolist()
    assert digits_task.train_idx.tolist() == train_idx.tolist()
    assert not set(train_idx.tolist()) & set(val_idx.tolist())
