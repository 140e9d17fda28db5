"""Benchmark: resident memory of a search, episode by episode, on a wide model.

Runs `run_search` on `bench/wide_model.py:wide` (a stride-4 stem and 60 3x3 convs of 64 channels: 61
channel groups, untrained) with the synthetic data set, and samples the process's resident set size (VmRSS)
every 0.2 s from a thread, keyed by the number of episodes logged so far. A search's memory must stay flat
after its first episodes; `--no-trim` switches off the return of freed heap memory after each evaluation
(`amc.engine.memory`) to show what it prevents. Writes `bench/results/memory_wide[_notrim].json` and `.md`.

    python bench/memory.py --episodes 200 --threads 1
"""

from __future__ import annotations

import re
import tempfile
import threading
import time
from pathlib import Path

import common  # bench/common.py; puts the repository on sys.path

import amc.reward
from agents.config import SearchConfig
from agents.search import run_search

WIDE = f"{Path(__file__).resolve().parent / 'wide_model.py'}:wide"
WIDE_NAME = "bench/wide_model.py:wide"  # how the results name it: no path of the machine it ran on


def rss_mb() -> float:
    """This process's resident set size in MB (Linux)."""
    return int(re.search(r"VmRSS:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024


def main(argv: list[str] | None = None, results: str | Path = common.RESULTS) -> None:
    parser = common.parser("memory", __doc__)
    common.add_common_args(parser, data=False)
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--no-trim", action="store_true", help="do not return freed heap memory after each episode")
    args = common.parse_args(parser, argv)
    if args.no_trim:
        amc.reward.release_free_memory = lambda: None  # the one call site: RewardEvaluator.__call__
    samples: list[tuple[float, int, float]] = []  # (seconds, episodes logged, RSS MB)
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        config = SearchConfig(model=WIDE, dataset="synthetic", episodes=args.episodes, warmup=args.warmup,
                              seed=args.seed, out=str(out))
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                log = out / "episodes.csv"
                episodes = max(0, len(log.read_text().splitlines()) - 1) if log.exists() else 0
                samples.append((time.monotonic() - started, episodes, rss_mb()))
                done.wait(0.2)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            result = run_search(config, progress=False)
        finally:
            done.set()
            thread.join()
    peak: dict[int, float] = {}  # the highest RSS while episode e+1 ran (e logged): with its transients
    floor: dict[int, float] = {}  # the lowest: what stays from episode to episode
    for _, episodes, rss in samples:
        peak[episodes] = max(peak.get(episodes, 0.0), rss)
        floor[episodes] = min(floor.get(episodes, float("inf")), rss)
    curve = [peak[e] for e in sorted(peak) if e < args.episodes]
    floors = [floor[e] for e in sorted(floor) if e < args.episodes]
    marks = [e for e in (0, 1, 5, 10, 20, 30, 50, 100, 150, args.episodes - 1) if e < len(curve)]
    after_warm = curve[10:] if len(curve) > 10 else curve
    name = "memory_wide" + ("_notrim" if args.no_trim else "")
    summary = common.summary(name, args, model=WIDE_NAME, groups=61, channels=64, episodes=result.episodes,
                             trim=not args.no_trim, seconds=time.monotonic() - started,
                             rss_mb_by_episode=curve, floor_rss_mb_by_episode=floors, peak_rss_mb=max(curve),
                             rss_mb_range_after_episode_10=[min(after_warm), max(after_warm)])
    lines = [
        f"# Resident memory of a {result.episodes}-episode search on a wide model (61 groups of 64 channels)"
        + (" without returning freed memory" if args.no_trim else ""),
        "",
        common.header(summary) + " Synthetic data, untrained weights; RSS sampled every 0.2 s: the highest and "
        "lowest value while the episode ran.",
        "",
        "| episodes done | " + " | ".join(str(e) for e in marks) + " |",
        "|---|" + "---|" * len(marks),
        "| peak RSS (MB) | " + " | ".join(f"{curve[e]:.0f}" for e in marks) + " |",
        "| lowest RSS (MB) | " + " | ".join(f"{floors[e]:.0f}" for e in marks) + " |",
        "",
        f"After episode 10: {min(after_warm):.0f} to {max(after_warm):.0f} MB; peak {max(curve):.0f} MB; "
        f"{summary['seconds'] / 60:.1f} min in all.",
    ]
    common.write(name, summary, lines, results)


if __name__ == "__main__":
    main()
