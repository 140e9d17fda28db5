"""`SearchConfig`: every argument of an AMC search and the one source of its defaults.

The defaults are AMC's reference settings (He et al., "AMC: AutoML for Model Compression and Acceleration
on Mobile Devices", ECCV 2018, section 4 and the reference code): 400 episodes with 100 of warm-up, preserve
ratios in [0.2, 1], 5,000 reward images (the default held-out split of a 50,000-image TRAIN set), 3,000
calibration images. The command line (`amc train-agent`), the benchmarks and the Python API all read them
from here; the config is saved as the run folder's `config.json` and compared on `--resume`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from amc.errors import AmcError, one_line

# `config.json` of a run folder says it is amc's with this format tag.
RUN_FORMAT = "amc-run/1"
# Keys every config.json of amc's has had, in any version: what tells a run configuration from another JSON file.
_CONFIG_KEYS = {"model", "dataset", "budget_kind", "budget_ratio", "episodes", "warmup"}
# The SB3 algorithms a search can use (`agents.ddpg.AGENTS` maps them to classes).
ALGORITHMS: tuple[str, ...] = ("ddpg", "td3", "sac")
# baselines whose policies can join a search's final selection (`SearchConfig.baseline_candidates`)
BASELINE_CANDIDATES: tuple[str, ...] = ("dp", "sensitivity")


@dataclass
class SearchConfig:
    """Every argument of a search (CleanRL's `Args` style: one line of doc per field)."""

    model: str = "digits_cnn"
    """registry name (`resnet56`), `pkg.mod:factory` or `file.py:factory` of the dense model"""
    checkpoint: str | None = None
    """trained weights of the dense model (None: the model as built)"""
    dataset: str = "digits"
    """digits, cifar10, cifar100, imagefolder or synthetic"""
    data_dir: str | None = None
    """folder holding the dataset's files (not needed for digits and synthetic)"""
    image_size: int | None = None
    """imagefolder only: read images of any size at this side in pixels (resize and centre crop), from disk"""
    budget_kind: str = "flops"
    """what the budget limits: flops (MACs), params or latency"""
    budget_ratio: float = 0.5
    """the budget as a fraction of the dense model's, in (0, 1]"""
    reward: str = "acc"
    """acc, or -error x log(cost) with flops, params or latency (AMC's resource-aware rewards)"""
    latency_batch: int = 1
    """batch size the latency table is measured at"""
    latency_channels_last: bool = False
    """measure the latency table in channels-last memory layout"""
    episodes: int = 400
    """episodes in all, warm-up included"""
    warmup: int = 100
    """first episodes with uniformly random actions; the agent trains after them"""
    val_size: int | None = None
    """TRAIN images held out as the reward split `val` (None: a fifth, at most 5,000)"""
    reward_data: str | None = None
    """a folder of the user's own validation images in class folders: rewards and the selection split come from
    it instead of held-out TRAIN images (val_size must then be None)"""
    select_size: int = 1000
    """images of the selection split, on which the final policy is chosen among the best candidates (TRAIN
    images outside val, calibration and re-fit; or from reward_data); 0: the best reward wins"""
    select_top: int = 8
    """distinct policies with the best rewards scored on the selection split at the end of a search"""
    baseline_candidates: str = ""
    """comma-separated baselines (dp, sensitivity) whose policies join the final selection as candidates
    (`agents.baselines`; costs their sensitivity table; acc reward, flops or params budget)"""
    ignore: str = ""
    """comma-separated layers whose output channels are never pruned (`amc.engine.groups.find_groups`)"""
    seed: int = 0
    """seed of the split, the calibration sample and the agent"""
    algo: str = "ddpg"
    """ddpg (AMC's), td3 or sac (stable-baselines3)"""
    lbound: float = 0.2
    """smallest preserve ratio an action can choose"""
    rbound: float = 1.0
    """largest preserve ratio an action can choose"""
    channel_round: int = 1
    """kept channels per group are multiples of this, or the whole group (AMC's channel rounding; 8 makes CPU and
    GPU kernels fast)"""
    selection: str = "ls"
    """how a group's kept channels are chosen: ls (greedy least squares), l1, l2 or bn"""
    calib_size: int = 3000
    """TRAIN images (outside val) whose statistics feed channel selection and the Gram re-fit"""
    refit_size: int = 256
    """TRAIN images on which each pruned network is re-fitted sequentially and its BatchNorm re-estimated"""
    race_images: int = 1000
    """val images every policy is scored on first; only a policy within race_margin of the best so far on them
    is scored on all of val (racing, `amc.reward.RacingReward`; acc reward only; 0: every policy on all of val)"""
    race_margin: float = 0.0
    """how far below the best policy's accuracy on the first race_images a policy may be and still be scored on
    all of val (0: only a policy at least as accurate as the best there)"""
    device: str = "auto"
    """where the search computes (model, statistics, re-fit, rewards, agent): auto (the first CUDA device if
    there is one, else the CPU), cpu, cuda or cuda:N"""
    out: str = "runs/amc"
    """the run folder"""

    def budget(self) -> Any:
        """The search's `amc.engine.budget.Budget`."""
        from amc.engine.budget import Budget  # numpy and torch: only when a search runs

        return Budget(self.budget_kind, self.budget_ratio)

    def check(self) -> None:
        """AmcError, before any work, for a setting outside its range or two that contradict each other."""
        from envs import REWARDS

        if self.algo not in ALGORITHMS:
            raise AmcError(f"unknown --algo {self.algo!r}; choose one of {', '.join(ALGORITHMS)}")
        if self.reward not in REWARDS:
            raise AmcError(f"unknown --reward {self.reward!r}; choose one of {', '.join(REWARDS)}")
        if not (isinstance(self.episodes, int) and isinstance(self.warmup, int) and 0 <= self.warmup < self.episodes):
            raise AmcError(f"--episodes {self.episodes} must be larger than --warmup {self.warmup} (and that at least 0)")
        if not (isinstance(self.channel_round, int) and self.channel_round >= 1):
            raise AmcError(f"--channel-round {self.channel_round} must be a whole number of channels >= 1 (e.g. 8)")
        if not (0 <= self.lbound < self.rbound <= 1):  # NaN fails it too
            raise AmcError(f"preserve ratios --lbound {self.lbound} and --rbound {self.rbound} need "
                           "0 <= lbound < rbound <= 1; pass e.g. --lbound 0.2 --rbound 1.0")
        if not (isinstance(self.seed, int) and 0 <= self.seed < 2**32):
            raise AmcError(f"--seed {self.seed} is outside [0, 2**32 - 1]; pass e.g. --seed 0")
        if not (isinstance(self.latency_batch, int) and 1 <= self.latency_batch <= 65536):
            raise AmcError(f"--latency-batch {self.latency_batch} is not a batch size; pass e.g. --latency-batch 64")
        if not (isinstance(self.race_images, int) and self.race_images >= 0):
            raise AmcError(f"--race-images {self.race_images} must be a count of images (0 turns racing off)")
        if not (isinstance(self.select_size, int) and self.select_size >= 0):
            raise AmcError(f"--select-size {self.select_size} must be a count of images (0: no final selection)")
        if not (isinstance(self.select_top, int) and self.select_top >= 1):
            raise AmcError(f"--select-top {self.select_top} must be at least 1 (--select-size 0 turns the final "
                           "selection off)")
        wrong = sorted(set(self.baseline_names()) - set(BASELINE_CANDIDATES))
        if wrong:
            raise AmcError(f"unknown --baseline-candidates {wrong[0]!r}; choose from {', '.join(BASELINE_CANDIDATES)}")
        if self.baseline_names() and (self.reward != "acc" or self.budget_kind == "latency"):
            raise AmcError("--baseline-candidates needs the acc reward and a flops or params budget (the baselines "
                           "support no latency budget); drop --baseline-candidates or change --reward / the budget")
        if self.reward_data is not None and self.val_size is not None:
            raise AmcError("--val-size holds TRAIN images out for the rewards, but --reward-data supplies them: "
                           "drop --val-size")
        if not (0 <= self.race_margin <= 1):
            raise AmcError(f"--race-margin {self.race_margin} must be an accuracy difference in [0, 1], e.g. 0.01")
        self.budget()  # checks kind and ratio
        from amc.engine.device import resolve_device  # torch: only when a search is checked

        resolve_device(self.device)

    def baseline_names(self) -> list[str]:
        """The baselines of `baseline_candidates`, in order."""
        return [name.strip() for name in self.baseline_candidates.split(",") if name.strip()]

    def task_settings(self) -> dict[str, Any]:
        """The arguments of `amc.reward.prepare_task` this config implies (compared with `Task.settings`)."""
        return dict(model=self.model, checkpoint=self.checkpoint, dataset=self.dataset, data_dir=self.data_dir,
                    val_size=self.val_size, seed=self.seed, calib_size=self.calib_size, refit_size=self.refit_size,
                    selection=self.selection, select_size=self.select_size, reward_data=self.reward_data,
                    ignore=self.ignore, image_size=self.image_size, channel_round=self.channel_round)

    def prepare_task(self) -> Any:
        """The `amc.reward.Task` this config searches: model, data, analysis and the reward evaluation."""
        from amc.reward import prepare_task  # heavy (data, torch-pruning); only when a search starts

        return prepare_task(**self.task_settings(), device=self.device)

    def check_task(self, task: Any) -> None:
        """AmcError when `task` was prepared with settings other than this config's."""
        import inspect

        from amc.reward import prepare_task

        # settings a config does not choose must be prepare_task's defaults
        defaults = {k: p.default for k, p in inspect.signature(prepare_task).parameters.items()
                    if p.default is not inspect.Parameter.empty}
        mine = {**defaults, **self.task_settings()}
        differ = [k for k in mine if k in task.settings and task.settings[k] != mine[k]]
        if differ:
            details = ", ".join(f"{k} {task.settings[k]!r} (config: {mine[k]!r})" for k in differ[:3])
            raise AmcError(f"the task was prepared with other settings than the search's config: {details}; "
                           "prepare it with config.prepare_task()")

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of `config.json` (tagged with `RUN_FORMAT`)."""
        return {"format": RUN_FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> SearchConfig:
        """The config of a `config.json`; fields it lacks take today's defaults, unknown ones are ignored."""
        names = {f.name for f in fields(cls)}
        if "bn_size" in saved and "refit_size" not in saved:  # the field's earlier name
            saved = {**saved, "refit_size": saved["bn_size"]}
        if "select_size" not in saved:  # a run of amc before the final selection: resume it as it ran
            saved = {**saved, "select_size": 0}
        return cls(**{k: v for k, v in saved.items() if k in names})

    @classmethod
    def read(cls, run_dir: str | Path) -> SearchConfig | None:
        """The config saved in a run folder, or None when it has none.

        Raises:
            AmcError: its config.json is damaged.
        """
        saved = read_config_json(run_dir, fix="write the run again with amc train-agent")
        return None if saved is None else cls.from_dict(saved)


def read_config_json(run_dir: str | Path, *, fix: str) -> dict[str, Any] | None:
    """The `config.json` a search saved in `run_dir`, as its JSON object; None when the folder has none.

    Raises:
        AmcError: the file is not an amc run configuration (damaged, or something else); the message ends
            in `fix`.
    """
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as exc:  # ValueError covers bad JSON and bad UTF-8
        saved, reason = None, one_line(exc)[:120]
    else:
        reason = "not an amc run configuration"
    if not isinstance(saved, dict) or not _CONFIG_KEYS <= set(saved):
        raise AmcError(f"{path} is damaged ({reason}); {fix}")
    return saved
