"""`amc train-agent`: an AMC search from start to finish, written to a run folder (`agents.runfolder`),
resumable: a killed search resumes from `checkpoint/` with `--resume`; the episode log is cut back to the
checkpoint and the episodes after it are run again. At the end the final policy is chosen among the best
candidates of the episode log on the selection split (`agents.selection`).
"""

from __future__ import annotations

import contextlib
import csv
import json
import pickle
import random
import signal
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.callbacks import CallbackList
from stable_baselines3.common.logger import Logger
from tqdm import tqdm

from agents.callbacks import EpisodeRecorderCallback, RewardRelabelCallback
from agents.config import SearchConfig
from agents.ddpg import make_agent
from agents.runfolder import EpisodeLog, RunFolder
from agents.selection import FinalSelection, select_final
from amc.engine.budget import Budget, uniform_counts
from amc.engine.device import resolve_device
from amc.engine.latency import LatencyTable, fit_to_latency
from amc.engine.pruner import ChannelPruner
from amc.errors import AmcError, one_line
from amc.fileio import atomic_copy, atomic_write_json
from amc.policy import Policy
from amc.reward import RacingReward, Task
from envs.channel_pruning import ChannelPruningEnv


@dataclass
class SearchState:
    """What a checkpoint restores besides the agent and its replay buffer."""

    episode: int = 0
    best_reward: float = -float("inf")
    best: Policy | None = None
    seconds: float = 0.0
    rng: dict[str, Any] = field(default_factory=dict)


@dataclass
class SearchResult:
    """A finished search: its folder, final and uniform policies (with `val_accuracy`, and `select_accuracy` when
    the task has a selection split, among their extra fields), episodes, the seconds spent in episodes over all
    its sessions, and the final selection (None without a selection split: the final policy is then the one
    with the best reward)."""

    run_dir: Path
    best: Policy
    uniform: Policy
    episodes: int
    seconds: float
    selection: FinalSelection | None = None


def _capture_rng(agent: Any) -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "action_space": agent.action_space.np_random.bit_generator.state,
        # SAC explores with its own policy and has no noise generator
        "noise": agent._noise_rng.bit_generator.state if hasattr(agent, "_noise_rng") else None,
    }


def _restore_rng(agent: Any, rng: dict[str, Any]) -> None:
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    agent.action_space.np_random.bit_generator.state = rng["action_space"]
    if rng["noise"] is not None:
        agent._noise_rng.bit_generator.state = rng["noise"]


def _compare_config(saved: dict, config: SearchConfig) -> None:
    current = config.to_dict()
    # these change only where the search runs, how long, or how its final policy is chosen at the end
    free = ("episodes", "out", "device", "select_top", "baseline_candidates")
    differ = [k for k in current if k in saved and saved[k] != current[k] and k not in free]
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
        # val_accuracy as measured on the val_images it was scored on (a raced policy's reward is an estimate);
        # kept channels of each producer, as policies record them (a chunked group counts every section)
        self.log.append([state.episode, f"{info['reward']:.6f}", f"{info['measured_accuracy']:.6f}",
                         f"{info['loss']:.6f}", info["images"], info["macs"], info["params"], f"{info['cost_ratio']:.6f}",
                         f"{seconds:.3f}", *[int(c) * g.sections for c, g in zip(info["counts"], self.task.pruner.groups)]])
        if info["reward"] > state.best_reward:
            state.best_reward = info["reward"]
            state.best = _policy(self.task, self.config, info["counts"], method="amc", episode=state.episode,
                                 reward=info["reward"], val_accuracy=info["accuracy"], seed=self.config.seed)
            state.best.save(self.run.path / "best_policy.json")
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

    `task` may be passed to reuse an already prepared model and data (tests, benchmarks); it must have
    been prepared as `config.prepare_task()` would. The run folder is locked while the search runs. `force`
    replaces an earlier run's files (only those: `agents.runfolder.OWN_FILES`); `resume` continues it from its
    newest whole checkpoint.

    Raises:
        AmcError: bad arguments or device; an `--out` that is a file or a folder of someone else's files; a
            run folder in use by another process, or with results and neither `resume` nor `force`; a `resume`
            with other arguments than the first run, or of a folder whose files are damaged beyond the last
            whole checkpoint; a `task` prepared with other settings.
    """
    config.check()
    if resume and force:
        raise AmcError("--resume continues a run and --force replaces it: pass one of them")
    resolve_device(config.device)
    run = RunFolder(Path(config.out))
    run.check_usable()
    if resume and not (run.path / "config.json").is_file():
        raise AmcError(f"nothing to resume in {run.path}: it has no config.json; start the run without --resume")
    created, abandoned = not run.path.exists(), False
    try:
        with run.locked():
            if resume:
                _compare_config(run.read_config(), config)
            elif run.has_results() and not force:
                raise AmcError(f"run folder {run.path} already has results; pass --resume to continue it or --force "
                               "to replace it")
            if task is not None:
                config.check_task(task)
            if force:
                run.clear()
            if not resume:  # first thing on disk, so a run killed during its set-up can be resumed
                atomic_write_json(run.path / "config.json", config.to_dict())
            try:
                return _search(config, run, task or config.prepare_task(), resume, progress)
            except AmcError:  # refused during its set-up (its data, its budget): no half-made run is left behind
                if not resume and not run.has_results():
                    run.clear()
                    abandoned = True
                raise
    finally:
        if abandoned and created:
            (run.path / ".lock").unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                run.path.rmdir()


def _load_checkpoint(run: RunFolder, agent: Any, env: ChannelPruningEnv, device: str) -> tuple[Any, SearchState]:
    """The agent and state of the newest checkpoint that loads whole (`checkpoint/`, else `checkpoint.old/`);
    `(agent, SearchState())` when the run has none and nothing was logged yet (killed during its set-up)."""
    problems = []
    for folder in run.checkpoints():
        try:
            state = pickle.loads((folder / "state.pkl").read_bytes())
            if not isinstance(state, SearchState):
                raise ValueError("state.pkl holds no search state")
            loaded = agent.load(folder / "agent.zip", env=env, device=device)
            if not (folder / "replay.pkl").is_file():
                raise FileNotFoundError("replay.pkl is missing")
            loaded.load_replay_buffer(folder / "replay.pkl")
        except Exception as exc:  # any damage: pickle, zip, torch and SB3 errors alike
            problems.append(f"{folder.name}/: {one_line(exc)[:100]}")
            continue
        if problems:
            warnings.warn(f"{problems[0]} is damaged; resuming from {folder.name}/ (episode {state.episode})")
        _restore_rng(loaded, state.rng)
        return loaded, state
    try:
        logged = len(EpisodeLog(run.path / "episodes.csv", []).read()) if (run.path / "episodes.csv").is_file() else 0
    except (OSError, UnicodeDecodeError, csv.Error):
        logged = "some"
    if logged or problems:
        found = "; ".join(problems) if problems else "no checkpoint/ folder"
        raise AmcError(f"cannot resume {run.path}: {logged} episodes are logged but no checkpoint loads ({found}); "
                       "start the run again with --force")
    return agent, SearchState()


def _search(config: SearchConfig, run: RunFolder, task: Task, resume: bool, progress: bool) -> SearchResult:
    """The search itself, in a locked run folder whose config.json is written."""
    budget = config.budget()
    latency = (latency_table(task, run.path, config.latency_batch, config.latency_channels_last,
                             progress=None if progress else False)
               if "latency" in (budget.kind, config.reward) else None)
    # racing compares accuracies, so it serves the accuracy reward only
    racing = RacingReward(task.evaluator, config.race_images, config.race_margin) \
        if config.race_images and config.reward == "acc" else None
    env = ChannelPruningEnv(task.pruner, racing or task.evaluator, budget, reward=config.reward,
                            lbound=config.lbound, rbound=config.rbound, latency=latency)
    n_steps = env.n_groups
    log = EpisodeLog(run.path / "episodes.csv", task.pruner.names)
    state = SearchState()
    agent = make_agent(config.algo, env, n_steps, warmup_episodes=config.warmup, seed=config.seed,
                       device=config.device)
    if resume:
        agent, state = _load_checkpoint(run, agent, env, config.device)
    log.truncate(state.episode)
    if resume:  # the folder resumes: record this run's arguments (its --out, --episodes may differ)
        atomic_write_json(run.path / "config.json", config.to_dict())
    if isinstance(state.best, dict):  # checkpoints of earlier versions hold the policy's JSON object
        state.best = Policy.from_dict(state.best)
    if state.best is not None:
        state.best.save(run.path / "best_policy.json")
        if racing is not None:  # a resumed race starts with the best policy so far as its leader
            racing(state.best.counts_for(task.pruner))

    recorder = SearchRecorder(run, log, state, task, config, agent, progress)
    recording = EpisodeRecorderCallback(recorder.on_episode, recorder.checkpoint)
    callback = CallbackList([RewardRelabelCallback(n_steps), recording])
    remaining = config.episodes - state.episode

    def request_stop(signum: int, frame: Any) -> None:
        # Ctrl-C lands between two steps, never inside a checkpoint or a library call
        recording.stop_requested = True

    previous = signal.signal(signal.SIGINT, request_stop)
    agent.set_logger(Logger(folder=None, output_formats=[]))  # SB3's default makes an empty folder in /tmp per run
    try:
        if remaining > 0:
            agent.learn(total_timesteps=remaining * n_steps, callback=callback, reset_num_timesteps=state.episode == 0)
    finally:
        signal.signal(signal.SIGINT, previous)
        recorder.close()
    if recording.stop_requested:
        raise KeyboardInterrupt
    recorder.checkpoint()
    atomic_copy(run.ckpt / "agent.zip", run.path / "agent.zip")

    rows = log.read()
    final, selection = _final_selection(task, config, run.path, log, rows, state.best)
    if budget.kind == "latency":
        final = _timed_within_budget(task, config, latency, final)
    final.save(run.path / "best_policy.json")
    flat = uniform_counts(task.pruner, env.cost, env.target)
    uniform = _policy(task, config, flat.tolist(), method="uniform", **_accuracies(task, flat))
    from agents.plots import plot_run  # matplotlib is slow to import; only needed at the end

    plot_run(rows, final.to_dict(), task.pruner.names, run.path)
    return SearchResult(run.path, final, uniform, state.episode, state.seconds, selection)


def _accuracies(task: Task, counts: np.ndarray) -> dict[str, float]:
    """`val_accuracy` of `counts` on all of val, and `select_accuracy` when the task has a selection split."""
    val, select = task.evaluator.rescore(counts)
    return {"val_accuracy": val.accuracy, **({} if select is None else {"select_accuracy": select.accuracy})}


def _final_selection(task: Task, config: SearchConfig, folder: Path, log: EpisodeLog, rows: list[dict[str, str]],
                     by_reward: Policy) -> tuple[Policy, FinalSelection | None]:
    """The final policy: the most accurate on the selection split of the `config.select_top` best distinct
    policies of the episode log (written to `final_selection.json`), or the best reward's without a selection
    split."""
    sections = [g.sections for g in task.pruner.groups]
    scored = ((log.unit_counts(row, sections), float(row["reward"]), int(row["episode"])) for row in rows)
    selection = select_final(task.evaluator, scored, config.select_top, baseline_policies(task, config))
    if selection is None:
        return by_reward, None
    atomic_write_json(folder / "final_selection.json", selection.to_dict())
    best = selection.best
    source = {} if best.source == "amc" else {"source": best.source}
    final = _policy(task, config, best.counts, method="amc", episode=best.episode, reward=best.reward,
                    val_accuracy=best.val_accuracy, select_accuracy=best.select_accuracy, select_gap=selection.gap,
                    candidates=len(selection.candidates), seed=config.seed, **source)
    return final, selection


def _timed_within_budget(task: Task, config: SearchConfig, table: LatencyTable, final: Policy) -> Policy:
    """The final policy of a latency budget, timed for real against the dense model (`fit_to_latency`): the table is
    an estimate, so a policy it put within the budget that runs slower is narrowed until it meets the budget when
    timed, and re-scored. The policy records its measured latency ratio (and the narrowing factor)."""
    counts = final.counts_for(task.pruner)
    predicted = float(table(counts) / table.dense)
    fit = fit_to_latency(task.pruner, table, counts, config.budget_ratio)
    timed = {"latency_predicted": predicted, "latency_measured": fit.measured}
    if fit.factor == 1.0:
        final.extra.update(timed)
        return final
    if fit.factor > 0:
        warnings.warn(f"the latency table put the final policy at {predicted:.3f} of the dense latency but it ran at "
                      f"{fit.first:.3f}; every group was narrowed by a factor {fit.factor:.3f} to meet the budget of "
                      f"{config.budget_ratio:g} when timed ({fit.measured:.3f})")
    else:
        warnings.warn(f"the final policy ran at {fit.first:.3f} of the dense latency and even the smallest model runs "
                      f"at {fit.measured:.3f}: the budget {config.budget_ratio:g} is not met on this machine; raise it")
    extra = {k: v for k, v in final.extra.items() if k not in ("selection", "val_accuracy", "select_accuracy")}
    return _policy(task, config, fit.keep.tolist(), **{**extra, **_accuracies(task, fit.keep), **timed,
                                                       "latency_narrowed": fit.factor, "latency_before": fit.first})


def baseline_policies(task: Task, config: SearchConfig) -> list[tuple[np.ndarray, str]]:
    """The policies of `config.baseline_candidates` at the search's budget and lower bound, as (counts [G],
    baseline name); one sensitivity table serves them all."""
    names = config.baseline_names()
    if not names or not task.evaluator.has_selection:
        return []
    from agents.baselines import BASELINES, sensitivity_table  # the baselines import the search's config

    table = sensitivity_table(task, lbound=config.lbound)
    return [(BASELINES[name](task, config.budget(), lbound=config.lbound, table=table).counts, name) for name in names]


def latency_table(task: Task, folder: Path, batch_size: int = 1, channels_last: bool = False, *,
                  progress: bool | None = None) -> LatencyTable:
    """The run's latency table: read from `folder/latency.json`, or measured once (at `batch_size`, in
    channels-last layout if `channels_last`, with a progress bar as `LatencyTable.measure`) and written there. A
    damaged file is measured again."""
    path = folder / "latency.json"
    if path.exists():
        try:
            return LatencyTable.from_dict(json.loads(path.read_text()))
        except Exception as exc:  # damaged: it is a cache of a measurement, so measure again
            warnings.warn(f"{path} is damaged or from an older amc ({one_line(exc)[:80]}); "
                          "measuring the latency table again")
    table = measure_latency_table(task.pruner, batch_size, channels_last, progress=progress)
    atomic_write_json(path, table.to_dict())
    return table


def measure_latency_table(pruner: ChannelPruner, batch_size: int = 1, channels_last: bool = False, *,
                          progress: bool | None = None) -> LatencyTable:
    """`LatencyTable.measure` with a progress bar on stderr (`progress` None: when stderr is a terminal)."""
    with tqdm(desc="latency table", unit="layer", disable=None if progress is None else not progress,
              leave=False) as bar:
        def advance(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        return LatencyTable.measure(pruner, batch_size=batch_size, channels_last=channels_last, progress=advance)


def policy_from_agent(agent_zip: str | Path, task: Task, budget: Budget) -> tuple[np.ndarray, dict[str, Any]]:
    """Run a trained agent's actor deterministically through the environment at `budget`.

    The budget may differ from the one it was trained for (and the model too: the state features are
    scaled per model). Bounds, channel rounding, reward and algorithm come from the run's `config.json` beside the
    agent (the task's pruner takes the run's `channel_round`).
    Returns the kept channel counts [G] and the final step's info (val accuracy, MACs, ...).
    """
    agent_zip = Path(agent_zip)
    if not agent_zip.is_file():
        raise AmcError(f"agent file {agent_zip} does not exist; pass the agent.zip of a finished amc train-agent run")
    saved = SearchConfig.read(agent_zip.parent) or SearchConfig()
    task.pruner.channel_round = saved.channel_round  # the pruning space the agent learnt in
    latency = latency_table(task, agent_zip.parent) if "latency" in (budget.kind, saved.reward) else None
    env = ChannelPruningEnv(task.pruner, task.evaluator, budget, reward=saved.reward, lbound=saved.lbound,
                            rbound=saved.rbound, latency=latency)
    # SB3's `load` unpickles the archive's data (cloudpickle: it can run code); only the network weights are
    # read here, with torch's safe loader, into an agent built from the run's config
    agent = make_agent(saved.algo, env, env.n_groups, warmup_episodes=saved.warmup, seed=saved.seed, device="cpu")
    try:
        agent.set_parameters(str(agent_zip), exact_match=True, device="cpu")
        if not all(torch.isfinite(p).all() for p in agent.policy.parameters()):
            raise ValueError("its network holds NaN or Inf weights")
    except Exception as exc:
        raise AmcError(f"cannot load agent {agent_zip} ({one_line(exc)[:200]}); "
                       "pass an agent.zip written by amc train-agent") from None
    obs, _ = env.reset(seed=0)
    done, info = False, {}
    while not done:
        action, _ = agent.predict(obs, deterministic=True)
        obs, _, done, _, info = env.step(action)
    return np.array(info["counts"]), info
