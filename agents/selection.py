"""Final selection: a search's policy chosen among its best candidates on the selection split.

A search keeps the policy with the highest reward out of hundreds, each scored on one small split. Part of that
reward is luck (noise of the split), so the winner's reward over-states it: the winner's curse. The best
`top` distinct candidates by reward are scored again, on the selection split, images no reward and no
re-fit has seen (`amc.reward.prepare_task`), and the best there is the final policy; its reward-split and
selection accuracies and their gap go in the run folder. The bias and its remedy, an evaluation on data the
selection did not use, are those of model selection in general (Cawley and Talbot, "On Over-fitting in Model
Selection and Subsequent Selection Bias in Performance Evaluation", JMLR 11, 2010, sections 3 and 5).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from amc.reward import RewardEvaluator

# candidates scored on the selection split: enough to hold several good policies, few enough that the choice
# among them is not itself a winner's curse on the selection split (1,000 images)
DEFAULT_TOP = 8


@dataclass
class Candidate:
    """One policy re-scored for the final choice: kept counts [G], its search reward and episode (0: none),
    accuracy in [0, 1] on all of the reward split `val_accuracy` (mean cross-entropy `val_loss`) and on the
    selection split `select_accuracy`; `source` is "amc" for a searched policy, else the baseline that made it
    (episode 0, reward its val accuracy)."""

    counts: list[int]
    reward: float
    episode: int
    val_accuracy: float
    val_loss: float
    select_accuracy: float
    source: str = "amc"


@dataclass
class FinalSelection:
    """The candidates (best reward first), the index of the chosen one and the split sizes."""

    candidates: list[Candidate]
    chosen: int
    val_images: int
    select_images: int

    @property
    def best(self) -> Candidate:
        """The chosen candidate."""
        return self.candidates[self.chosen]

    @property
    def gap(self) -> float:
        """The chosen policy's reward-split accuracy minus its selection-split accuracy (the optimism left)."""
        return self.best.val_accuracy - self.best.select_accuracy

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of a run folder's `final_selection.json`."""
        by_reward = self.candidates[0]
        return {"chosen": self.chosen, "val_images": self.val_images, "select_images": self.select_images,
                "gap": self.gap, "by_reward_gap": by_reward.val_accuracy - by_reward.select_accuracy,
                "candidates": [asdict(c) for c in self.candidates]}


def best_distinct(scored: Iterable[tuple[np.ndarray, float, int]], top: int) -> list[tuple[np.ndarray, float, int]]:
    """The `top` distinct policies with the highest reward, best first, from (counts [G], reward, episode)
    triples; a policy seen twice keeps its best reward (and that reward's earliest episode)."""
    best: dict[tuple[int, ...], tuple[np.ndarray, float, int]] = {}
    for counts, reward, episode in scored:
        key = tuple(int(c) for c in counts)
        if key not in best or reward > best[key][1] or (reward == best[key][1] and episode < best[key][2]):
            best[key] = (np.asarray(counts, dtype=np.int64), float(reward), int(episode))
    return sorted(best.values(), key=lambda c: (-c[1], c[2]))[:top]


def select_final(evaluator: RewardEvaluator, scored: Iterable[tuple[np.ndarray, float, int]],
                 top: int = DEFAULT_TOP, others: Sequence[tuple[np.ndarray, str]] = ()) -> FinalSelection | None:
    """Score the `top` best distinct policies of `scored` (counts [G], reward, episode), and the policies of
    `others` ((counts [G], name of the baseline that made them), e.g. DP's) that are not among them, on all of
    val and on the selection split, and choose the most accurate on the selection split (a tie goes to the
    higher reward, then to the searched policy). None when the evaluator has no selection split, `top` is 0 or
    nothing was scored. Costs one evaluation per candidate.
    """
    candidates = best_distinct(scored, top) if top > 0 and evaluator.has_selection else []
    if not candidates:
        return None
    rescored = []
    for counts, reward, episode in candidates:
        val, select = evaluator.rescore(counts)
        rescored.append(Candidate(counts.tolist(), reward, episode, val.accuracy, val.loss, select.accuracy))
    for counts, source in others:
        if any(c.counts == list(counts) for c in rescored):
            continue
        val, select = evaluator.rescore(counts)
        rescored.append(Candidate(list(map(int, counts)), val.accuracy, 0, val.accuracy, val.loss, select.accuracy,
                                  source))
    chosen = max(range(len(rescored)), key=lambda i: (rescored[i].select_accuracy, -i))
    return FinalSelection(rescored, chosen, len(evaluator.val_y), len(evaluator.select_y))
