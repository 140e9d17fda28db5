"""A search survives being killed: real `amc train-agent` processes are killed and resumed."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import rows

from amc.models.zoo import digits_checkpoint

# whole `amc train-agent` processes, killed and resumed: about a minute each
pytestmark = pytest.mark.slow

EPISODES, WARMUP = 40, 10


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    """Environment of the subprocesses: one shared cache, so the digits model is trained once."""
    cache = tmp_path_factory.mktemp("cache")
    digits_checkpoint(cache)
    return {**os.environ, "AMC_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def command(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "amc.cli", "train-agent", "--episodes", str(EPISODES), "--warmup", str(WARMUP),
            "--target-flops", "0.4", "--seed", "3", "--out", str(out), "--no-progress", *extra]


def wait_for_new_episode(run: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """Block until `proc` has logged an episode beyond those on disk now (or has exited)."""
    start = len(rows(run)) if (run / "episodes.csv").exists() else 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if (run / "episodes.csv").exists() and len(rows(run)) > start:
            return
        time.sleep(0.05)


def test_killed_search_resumes_to_the_same_result(env, tmp_path):
    reference = tmp_path / "reference"
    done = subprocess.run(command(reference), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr

    run = tmp_path / "killed"
    rng = random.Random(0)
    kills = [signal.SIGKILL, signal.SIGINT, signal.SIGKILL, signal.SIGKILL]
    logged = []  # episodes on disk after each kill
    for sig in kills:
        resume = ["--resume"] if (run / "config.json").exists() else []
        proc = subprocess.Popen(command(run, *resume), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        # every signal lands while episodes run: after a new episode is logged, at a random moment of the next
        wait_for_new_episode(run, proc)
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=120)
        if proc.returncode == 0:
            continue  # it finished before the signal: resuming a finished run is also fine
        if sig == signal.SIGINT:
            assert proc.returncode == 130, stderr
            assert "--resume" in stderr and "Traceback" not in stderr
        logged.append(len(rows(run)) if (run / "episodes.csv").exists() else 0)
    assert any(0 < n < EPISODES for n in logged), f"no kill landed mid-search: {logged}"
    final = subprocess.run(command(run, "--resume"), env=env, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr

    got = rows(run)
    assert [int(r["episode"]) for r in got] == list(range(1, EPISODES + 1))
    assert got == rows(reference)
    assert (run / "best_policy.json").read_text() == (reference / "best_policy.json").read_text()


def test_resume_after_a_kill_between_checkpoint_renames(env, tmp_path):
    run = tmp_path / "torn"
    first = subprocess.run(command(run), env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    # the moment between "checkpoint -> checkpoint.old" and "checkpoint.tmp -> checkpoint"
    (run / "checkpoint").rename(run / "checkpoint.old")
    shutil.copytree(run / "checkpoint.old", run / "checkpoint.tmp")
    (run / "checkpoint.tmp" / "state.pkl").write_bytes(b"torn")
    resumed = subprocess.run(command(run, "--resume"), env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert [int(r["episode"]) for r in rows(run)] == list(range(1, EPISODES + 1))
