"""The final selection (agents.selection), the selection split and `--reward-data` (amc.reward.prepare_task)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from agents.config import SearchConfig
from agents.search import run_search
from agents.selection import best_distinct, select_final
from amc.cli import main
from amc.data.datasets import load_dataset
from amc.data.transforms import normalize
from amc.errors import AmcError
from amc.models.zoo import digits_checkpoint
from amc.reward import Evaluation, prepare_task
from tests.conftest import assert_user_error


def test_best_distinct_keeps_each_policy_once_with_its_best_reward():
    scored = [(np.array([4, 4]), 0.5, 1), (np.array([2, 6]), 0.7, 2), (np.array([4, 4]), 0.9, 3),
              (np.array([6, 2]), 0.7, 4), (np.array([2, 6]), 0.6, 5)]
    best = best_distinct(scored, top=2)
    assert [(c.tolist(), r, e) for c, r, e in best] == [([4, 4], 0.9, 3), ([2, 6], 0.7, 2)]
    assert len(best_distinct(scored, top=10)) == 3


class FakeEvaluator:
    """Val and selection-split accuracies looked up by policy."""

    def __init__(self, scores):
        self.scores, self.rescored = scores, []
        self.val_y, self.select_y = torch.zeros(50), torch.zeros(20)

    @property
    def has_selection(self):
        return self.select_y is not None

    def rescore(self, counts):
        self.rescored.append(tuple(counts))
        val, select = self.scores[tuple(counts)]
        return Evaluation(val, 0.1, 50), Evaluation(select, 0.2, 20)


def test_select_final_chooses_on_the_selection_split_among_the_best_rewards():
    scores = {(1,): (0.95, 0.80), (2,): (0.93, 0.90), (3,): (0.90, 0.90), (4,): (0.50, 0.99)}
    evaluator = FakeEvaluator(scores)
    scored = [(np.array([k]), reward, k) for k, reward in ((1, 0.95), (2, 0.93), (3, 0.90), (4, 0.5))]
    selection = select_final(evaluator, scored, top=3)
    # the 4th reward is never scored; 2 and 3 tie on the selection split and the better reward wins
    assert evaluator.rescored == [(1,), (2,), (3,)]
    assert selection.chosen == 1 and selection.best.counts == [2] and selection.best.episode == 2
    assert selection.gap == pytest.approx(0.03)
    saved = selection.to_dict()
    assert saved["by_reward_gap"] == pytest.approx(0.15) and len(saved["candidates"]) == 3
    assert json.loads(json.dumps(saved)) == saved
    evaluator.select_y = None  # no selection split: no final selection
    assert select_final(evaluator, scored) is None


def test_the_selection_split_shares_no_image_with_the_rewards(digits_task):
    task = digits_task
    assert len(task.select_idx) == len(task.train_idx) // 5  # digits: fewer than 1,000 TRAIN images left
    assert not np.intersect1d(task.select_idx.numpy(), task.val_idx.numpy()).size
    assert np.isin(task.select_idx.numpy(), task.train_idx.numpy()).all()
    val, select = task.evaluator.rescore(task.pruner.channels)
    assert val.images == len(task.val_idx) and select.images == len(task.select_idx)
    # the same as the reward evaluation on all of val
    assert val.accuracy == task.evaluator(task.pruner.channels).accuracy


def test_without_a_selection_split_the_calibration_is_as_before(digits_task):
    task = prepare_task("digits_cnn", digits_checkpoint(), "digits", seed=0, select_size=0)
    assert task.evaluator.select_y is None and len(task.select_idx) == 0
    # the re-fit images are drawn from every TRAIN image outside val, as amc did before the selection split
    g = torch.Generator().manual_seed(0 + 2)
    expected = task.train_idx[torch.randperm(len(task.train_idx), generator=g)[:256]]
    images = normalize(task.dataset.train.images[expected], task.model.mean, task.model.std)
    assert torch.equal(task.evaluator.refit_x.cpu().contiguous(), images)
    # with a selection split, none of its images is a re-fit image
    chosen = normalize(digits_task.dataset.train.images[digits_task.select_idx], task.model.mean, task.model.std)
    refit = digits_task.evaluator.refit_x.cpu().flatten(1)
    assert not (torch.cdist(chosen.flatten(1), refit) == 0).any()
    # an old run folder's config (no select_size) resumes without a selection split
    assert SearchConfig.from_dict({k: v for k, v in SearchConfig().to_dict().items() if k != "select_size"}
                                  ).select_size == 0


def reward_folder(root: Path, n_per_class: int = 6, size: tuple[int, int] = (8, 8), classes=range(10)) -> Path:
    """A folder of labelled digit images: the first TEST images of each class, saved as 8-bit grayscale PNG."""
    test = load_dataset("digits").test
    for label in classes:
        folder = root / str(label)
        folder.mkdir(parents=True)
        for i, index in enumerate(torch.nonzero(test.labels == label)[:n_per_class, 0]):
            Image.fromarray(test.images[index, 0].numpy()).resize(size).save(folder / f"{i}.png")
    return root


def test_reward_data_supplies_the_reward_and_selection_splits(tmp_path):
    folder = reward_folder(tmp_path / "mine")
    task = prepare_task("digits_cnn", digits_checkpoint(), "digits", seed=0, reward_data=folder, select_size=20)
    assert len(task.evaluator.val_y) == 40 and len(task.evaluator.select_y) == 20
    assert len(task.val_idx) == 0 and len(task.train_idx) == len(task.dataset.train)
    # the labels are the folders' class names in the dataset's order
    assert sorted(torch.cat([task.evaluator.val_y, task.evaluator.select_y]).tolist()) == sorted(list(range(10)) * 6)
    # the dense model recognises the images (TEST digits): the labels are right
    assert task.evaluator(task.pruner.channels).accuracy > 0.9


@pytest.mark.parametrize("problem", ["unknown class", "other size", "too few", "with val-size"])
def test_reward_data_errors(tmp_path, problem):
    folder = tmp_path / "mine"
    kwargs = {"select_size": 20}
    if problem == "unknown class":
        reward_folder(folder, classes=range(2))
        (folder / "cat").mkdir()
        Image.new("L", (8, 8)).save(folder / "cat" / "0.png")
        needle = "cat"
    elif problem == "other size":
        reward_folder(folder, size=(16, 16))
        needle = "1x16x16"
    elif problem == "too few":
        reward_folder(folder, n_per_class=2)
        needle = "--select-size"
    else:
        reward_folder(folder, n_per_class=2)
        kwargs["val_size"] = 100
        needle = "--val-size"
    with pytest.raises(AmcError, match=needle):
        prepare_task("digits_cnn", digits_checkpoint(), "digits", seed=0, reward_data=folder, **kwargs)


def test_cli_reward_data_with_val_size_is_one_line(tmp_path, capsys):
    folder = reward_folder(tmp_path / "mine", n_per_class=2)
    code = main(["train-agent", "--reward-data", str(folder), "--val-size", "100", "--out", str(tmp_path / "run")])
    assert_user_error(code, capsys.readouterr().err, "--val-size")
    assert not (tmp_path / "run").exists()


def test_search_with_reward_data_and_its_resume(tmp_path, digits_task):
    folder = reward_folder(tmp_path / "mine", n_per_class=10)
    config = SearchConfig(checkpoint=str(digits_checkpoint()), reward_data=str(folder), select_size=30,
                          budget_ratio=0.4, episodes=8, warmup=4, out=str(tmp_path / "run"))
    result = run_search(config, progress=False)
    assert result.selection is not None and result.selection.select_images == 30
    assert result.selection.val_images == 70
    again = run_search(replace(config, episodes=8), resume=True, progress=False)
    assert again.best.to_dict() == result.best.to_dict()


def test_baseline_candidates_join_the_final_selection_of_a_finished_run(tmp_path, digits_task):
    config = SearchConfig(checkpoint=str(digits_checkpoint()), budget_ratio=0.3, episodes=6, warmup=3,
                          out=str(tmp_path / "run"))
    alone = run_search(config, progress=False, task=digits_task)
    assert {c.source for c in alone.selection.candidates} == {"amc"}
    # a finished run takes the baselines' policies at the end of a resume: no episode runs again
    both = run_search(replace(config, baseline_candidates="dp,sensitivity"), resume=True, progress=False,
                      task=digits_task)
    assert both.episodes == 6 and len(rows_of(both.run_dir)) == 6
    sources = [c.source for c in both.selection.candidates]
    assert sources[: len(alone.selection.candidates)] == ["amc"] * len(alone.selection.candidates)
    assert {"dp", "sensitivity"} & set(sources)  # unless the search found the very same policies
    chosen = both.selection.best
    assert chosen.select_accuracy == max(c.select_accuracy for c in both.selection.candidates)
    assert chosen.select_accuracy >= alone.selection.best.select_accuracy
    saved = json.loads((both.run_dir / "final_selection.json").read_text())
    assert [c["source"] for c in saved["candidates"]] == sources


def rows_of(run: Path) -> list[str]:
    return (run / "episodes.csv").read_text().splitlines()[1:]


@pytest.mark.parametrize(("fields", "needle"), [
    ({"baseline_candidates": "dp,greedy"}, "greedy"),
    ({"baseline_candidates": "dp", "reward": "flops"}, "acc reward"),
    ({"baseline_candidates": "dp", "budget_kind": "latency"}, "latency"),
    ({"select_top": 0}, "--select-top"),
    ({"select_size": -1}, "--select-size"),
    ({"reward_data": "x", "val_size": 10}, "--val-size"),
])
def test_selection_settings_are_checked(fields, needle):
    with pytest.raises(AmcError, match=needle):
        replace(SearchConfig(), **fields).check()
