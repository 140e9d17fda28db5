"""`amc train-agent`: an AMC search from start to finish, written to a run folder, resumable.

Run folder (`runs/NAME/`):
- `config.json`      every argument of the run
- `episodes.csv`     one row per finished episode: episode, reward, val accuracy, MACs, ... ratios
- `best_policy.json` the best policy so far (amc policy schema plus val accuracy)
- `agent.zip`        the SB3 agent at the end
- `checkpoint/`      agent, replay buffer (with its reward baseline), best and random states after the last episode
- `rewards.png`, `best_policy.png`  reward/accuracy per episode; preserve ratio per layer
- `latency.json`     the latency table, for a latency budget or reward (measured once)
Every file is written atomically. A killed search resumes from `checkpoint/` with `--resume`: the
episode log is cut back to the checkpoint and the episodes after it are run again.
"""

from __future__ import annotations

import csv
import io
import json
import pickle
import random
import shutil
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.logger import Logger
from tqdm import tqdm

from agents.callbacks import EpisodeRewardCallback
from agents.ddpg import ALGORITHMS, make_agent
from amc.budget import Budget, uniform_counts
from amc.errors import AmcError
from amc.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text
from amc.latency import LatencyTable
from amc.policy import Policy
from amc.task import Task, prepare_task
from envs.channel_pruning import ChannelPruningEnv

RESULT_FILES = ("episodes.csv", "best_policy.json", "checkpoint", "agent.zip")


@dataclass
class SearchConfig:
    """Every argument of a search; saved as `config.json` and compared on `--resume`."""

    model: str = "digits_cnn"
    checkpoint: str | None = None
    dataset: str = "digits"
    data_dir: str | None = None
    budget_kind: str = "flops"
    budget_ratio: float = 0.5
    reward: str = "acc"
    latency_batch: int = 1
    latency_channels_last: bool = False
    episodes: int = 400
    warmup: int = 100
    val_size: int | None = None
    seed: int = 0
    algo: str = "ddpg"
    lbound: float = 0.2
    rbound: float = 1.0
    selection: str = "ls"
    calib_size: int = 3000
    bn_size: int = 256
    device: str = "cpu"
    out: str = "runs/amc"

    def budget(self) -> Budget:
        return Budget(self.budget_kind, self.budget_ratio)


@dataclass
class SearchState:
    """What a checkpoint restores besides the agent and its replay buffer."""

    episode: int = 0
    best_reward: float = -float("inf")
    best: dict[str, Any] | None = None
    seconds: float = 0.0
    rng: dict[str, Any] = field(default_factory=dict)


@dataclass
class SearchResult:
    """A finished search: its folder, best and uniform policies (policy dicts), episodes, and the
    seconds spent in episodes over all its sessions."""

    run_dir: Path
    best: dict[str, Any]
    uniform: dict[str, Any]
    episodes: int
    seconds: float


def _capture_rng(agent: Any) -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "action_space": agent.action_space.np_random.bit_generator.state,
        "noise": agent._noise_rng.bit_generator.state,
    }


def _restore_rng(agent: Any, rng: dict[str, Any]) -> None:
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    agent.action_space.np_random.bit_generator.state = rng["action_space"]
    agent._noise_rng.bit_generator.state = rng["noise"]


class RunFolder:
    """Files of one run; all writes atomic."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ckpt = path / "checkpoint"

    def has_results(self) -> bool:
        return any((self.path / name).exists() for name in RESULT_FILES)

    def write_checkpoint(self, agent: Any, state: SearchState) -> None:
        """Agent, replay buffer and state into a fresh folder, then swapped in by renames: a kill at any
        moment leaves either the old or the new checkpoint whole (`checkpoint.old` during the swap)."""
        tmp, old = self.path / "checkpoint.tmp", self.path / "checkpoint.old"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        agent.save(tmp / "agent.zip")
        agent.save_replay_buffer(tmp / "replay.pkl")
        atomic_write_bytes(tmp / "state.pkl", pickle.dumps(state))
        if self.ckpt.exists():
            shutil.rmtree(old, ignore_errors=True)
            self.ckpt.rename(old)
        tmp.rename(self.ckpt)
        shutil.rmtree(old, ignore_errors=True)

    def latest_checkpoint(self) -> Path | None:
        for candidate in (self.ckpt, self.path / "checkpoint.old"):
            if (candidate / "state.pkl").exists():
                return candidate
        return None


class EpisodeLog:
    """`episodes.csv`: appended one flushed row per episode; cut back to a checkpoint on resume."""

    def __init__(self, path: Path, group_names: list[str]) -> None:
        self.path = path
        self.columns = ["episode", "reward", "val_accuracy", "val_loss", "macs", "params", "cost_ratio",
                        "seconds"] + [f"ratio:{n}" for n in group_names]

    def truncate(self, episodes: int) -> None:
        """Keep the header and the first `episodes` complete rows (a torn last line is dropped)."""
        lines = self.path.read_text().splitlines(keepends=True) if self.path.exists() else []
        complete = [line for line in lines if line.endswith("\n")]
        atomic_write_text(self.path, "".join(complete[: episodes + 1]) if complete else self._header())

    def _header(self) -> str:
        buffer = io.StringIO()
        csv.writer(buffer).writerow(self.columns)
        return buffer.getvalue()

    def append(self, row: list[Any]) -> None:
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow(row)
            f.flush()

    def read(self) -> list[dict[str, str]]:
        with open(self.path, newline="") as f:
            return list(csv.DictReader(f))


def _compare_config(saved: dict, config: SearchConfig) -> None:
    current = asdict(config)
    differ = [k for k in current if k in saved and saved[k] != current[k] and k not in ("episodes", "out")]
    if differ:
        def flag(key: str) -> str:
            return "the budget (--target-*)" if key.startswith("budget") else "--" + key.replace("_", "-")

        details = ", ".join(f"{flag(k)} was {saved[k]!r}, now {current[k]!r}" for k in differ[:3])
        raise AmcError(f"--resume needs the arguments of the first run: {details}")


def _policy(task: Task, config: SearchConfig, counts: list[int], **extra: Any) -> Policy:
    return Policy.from_counts(task.pruner, config.model, np.array(counts), config.budget(), **extra)


class SearchRecorder:
    """Writes what each episode produced: the log row, the best policy, progress, checkpoints."""

    def __init__(self, run: RunFolder, log: EpisodeLog, state: SearchState, task: Task, config: SearchConfig,
                 agent: Any, progress: bool) -> None:
        self.run, self.log, self.state, self.task, self.config, self.agent = run, log, state, task, config, agent
        self.bar = tqdm(total=config.episodes, initial=state.episode, desc="amc search", unit="ep", disable=not progress)
        self.episode_start = time.monotonic()

    def on_episode(self, info: dict) -> None:
        state = self.state
        state.episode += 1
        seconds = time.monotonic() - self.episode_start
        state.seconds += seconds
        ratios = [c / n for c, n in zip(info["counts"], self.task.pruner.channels)]
        self.log.append([state.episode, f"{info['reward']:.6f}", f"{info['accuracy']:.6f}", f"{info['loss']:.6f}",
                         info["macs"], info["params"], f"{info['cost_ratio']:.6f}", f"{seconds:.3f}",
                         *[f"{r:.4f}" for r in ratios]])
        if info["reward"] > state.best_reward:
            state.best_reward = info["reward"]
            state.best = _policy(self.task, self.config, info["counts"], method="amc", episode=state.episode,
                                 reward=info["reward"], val_accuracy=info["accuracy"], seed=self.config.seed).to_dict()
            atomic_write_json(self.run.path / "best_policy.json", state.best)
        self.bar.set_postfix(best=f"{state.best_reward:.4f}", acc=f"{info['accuracy']:.4f}")
        self.bar.update(1)

    def checkpoint(self) -> None:
        self.state.rng = _capture_rng(self.agent)
        self.run.write_checkpoint(self.agent, self.state)
        self.episode_start = time.monotonic()

    def close(self) -> None:
        self.bar.close()


def run_search(config: SearchConfig, *, resume: bool = False, force: bool = False, progress: bool = True,
               task: Task | None = None) -> SearchResult:
    """Run (or resume) the AMC search described by `config` and write its run folder.

    `task` may be passed to reuse an already prepared model and data (tests, benchmarks).
    """
    if config.algo not in ALGORITHMS:
        raise AmcError(f"unknown --algo {config.algo!r}; choose one of {', '.join(ALGORITHMS)}")
    if config.episodes <= config.warmup:
        raise AmcError(f"--episodes {config.episodes} must be larger than --warmup {config.warmup}")
    run = RunFolder(Path(config.out))
    if run.path.exists() and run.has_results() and not (resume or force):
        raise AmcError(f"run folder {run.path} already has results; pass --resume to continue it or --force to replace it")
    if resume and not (run.path / "config.json").exists():
        raise AmcError(f"nothing to resume in {run.path}: it has no config.json; start the run without --resume")
    if resume:
        _compare_config(json.loads((run.path / "config.json").read_text()), config)
    elif force and run.path.exists():
        shutil.rmtree(run.path)
    run.path.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run.path / "config.json", asdict(config))

    task = task or prepare_task(
        config.model, config.checkpoint, config.dataset, config.data_dir, val_size=config.val_size,
        seed=config.seed, calib_size=config.calib_size, bn_size=config.bn_size, selection=config.selection,
    )
    budget = config.budget()
    latency = (latency_table(task, run.path, config.latency_batch, config.latency_channels_last)
               if "latency" in (budget.kind, config.reward) else None)
    env = ChannelPruningEnv(task.pruner, task.evaluator, budget, reward=config.reward,
                            lbound=config.lbound, rbound=config.rbound, latency=latency)
    n_steps = env.n_groups
    log = EpisodeLog(run.path / "episodes.csv", task.pruner.names)
    state = SearchState()
    agent = make_agent(config.algo, env, n_steps, warmup_episodes=config.warmup, seed=config.seed,
                       device=config.device)
    checkpoint = run.latest_checkpoint() if resume else None
    if checkpoint is not None:
        agent = agent.load(checkpoint / "agent.zip", env=env, device=config.device)
        agent.load_replay_buffer(checkpoint / "replay.pkl")
        state = pickle.loads((checkpoint / "state.pkl").read_bytes())
        _restore_rng(agent, state.rng)
    log.truncate(state.episode)
    if state.best is not None:
        atomic_write_json(run.path / "best_policy.json", state.best)

    recorder = SearchRecorder(run, log, state, task, config, agent, progress)
    callback = EpisodeRewardCallback(n_steps, recorder.on_episode, recorder.checkpoint)
    remaining = config.episodes - state.episode

    def request_stop(signum: int, frame: Any) -> None:
        # Ctrl-C lands between two steps, never inside a checkpoint or a library call
        callback.stop_requested = True

    previous = signal.signal(signal.SIGINT, request_stop)
    agent.set_logger(Logger(folder=None, output_formats=[]))  # SB3's default makes an empty folder in /tmp per run
    try:
        if remaining > 0:
            agent.learn(total_timesteps=remaining * n_steps, callback=callback, reset_num_timesteps=checkpoint is None)
    finally:
        signal.signal(signal.SIGINT, previous)
        recorder.close()
    if callback.stop_requested:
        raise KeyboardInterrupt
    recorder.checkpoint()
    shutil.copyfile(run.ckpt / "agent.zip", run.path / "agent.tmp.zip")
    (run.path / "agent.tmp.zip").replace(run.path / "agent.zip")

    uniform_counts_ = uniform_counts(task.pruner, env.cost, env.target)
    uniform_eval = task.evaluator(uniform_counts_)
    uniform = _policy(task, config, uniform_counts_.tolist(), method="uniform",
                      val_accuracy=uniform_eval.accuracy).to_dict()
    from agents.plots import plot_run  # matplotlib is slow to import; only needed at the end

    plot_run(log.read(), state.best, task.pruner.names, run.path)
    return SearchResult(run.path, state.best or {}, uniform, state.episode, state.seconds)


def latency_table(task: Task, folder: Path, batch_size: int = 1, channels_last: bool = False) -> LatencyTable:
    """The run's latency table: read from `folder/latency.json`, or measured once (at `batch_size`, in
    channels-last layout if `channels_last`) and written there."""
    path = folder / "latency.json"
    if path.exists():
        return LatencyTable.from_dict(json.loads(path.read_text()))
    table = LatencyTable.measure(task.pruner, batch_size=batch_size, channels_last=channels_last)
    atomic_write_json(path, table.to_dict())
    return table


def policy_from_agent(agent_zip: str | Path, task: Task, budget: Budget) -> tuple[np.ndarray, dict[str, Any]]:
    """Run a trained agent's actor deterministically through the environment at `budget`.

    The budget may differ from the one it was trained for (and the model too: the state features are
    scaled per model). Bounds, reward and algorithm come from the run's `config.json` beside the agent.
    Returns the kept channel counts [G] and the final step's info (val accuracy, MACs, ...).
    """
    agent_zip = Path(agent_zip)
    if not agent_zip.is_file():
        raise AmcError(f"agent file {agent_zip} does not exist; pass the agent.zip of a finished amc train-agent run")
    config_file = agent_zip.parent / "config.json"
    saved = json.loads(config_file.read_text()) if config_file.exists() else {}
    algo = saved.get("algo", "ddpg")
    try:
        agent = ALGORITHMS[algo].load(agent_zip, device="cpu")
    except Exception as exc:
        raise AmcError(f"cannot load agent {agent_zip} ({type(exc).__name__}: {exc}); pass an agent.zip written by amc train-agent") from None
    reward = saved.get("reward", "acc")
    latency = latency_table(task, agent_zip.parent) if "latency" in (budget.kind, reward) else None
    env = ChannelPruningEnv(task.pruner, task.evaluator, budget, reward=reward, lbound=saved.get("lbound", 0.2),
                            rbound=saved.get("rbound", 1.0), latency=latency)
    obs, _ = env.reset(seed=0)
    done, info = False, {}
    while not done:
        action, _ = agent.predict(obs, deterministic=True)
        obs, _, done, _, info = env.step(action)
    return np.array(info["counts"]), info
