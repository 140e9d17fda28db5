"""The run folder of a search (`runs/NAME/`) and its episode log.

- `config.json`      every argument of the run (`SearchConfig`)
- `episodes.csv`     one row per finished episode: episode, reward, val accuracy, MACs, ..., kept channels
- `best_policy.json` the best policy so far (amc policy schema plus val accuracy)
- `agent.zip`        the SB3 agent at the end
- `checkpoint/`      agent, replay buffer (with its reward baseline), best and random states after the last episode
- `rewards.png`, `best_policy.png`  reward/accuracy per episode; preserve ratio per layer
- `latency.json`     the latency table, for a latency budget or reward (measured once)

Every file is written atomically.
"""

from __future__ import annotations

import csv
import io
import pickle
import shutil
from pathlib import Path
from typing import Any

from amc.errors import AmcError
from amc.fileio import atomic_write_bytes, atomic_write_text

RESULT_FILES = ("episodes.csv", "best_policy.json", "checkpoint", "agent.zip")


class RunFolder:
    """Files of one run; all writes atomic."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ckpt = path / "checkpoint"

    def has_results(self) -> bool:
        """True when an earlier search wrote results here."""
        return any((self.path / name).exists() for name in RESULT_FILES)

    def write_checkpoint(self, agent: Any, state: Any) -> None:
        """Agent, replay buffer and `state` (pickled) into a fresh folder, then swapped in by renames: a kill
        at any moment leaves either the old or the new checkpoint whole (`checkpoint.old` during the swap)."""
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
        """The newest complete checkpoint folder, or None."""
        for candidate in (self.ckpt, self.path / "checkpoint.old"):
            if (candidate / "state.pkl").exists():
                return candidate
        return None


class EpisodeLog:
    """`episodes.csv`: appended one flushed row per episode; cut back to a checkpoint on resume.

    Columns: episode, reward, val_accuracy, val_loss, macs, params, cost_ratio (of the budget's kind),
    seconds, then `keep:NAME`, the integer channels kept in each group (the policy, exactly).
    """

    def __init__(self, path: Path, group_names: list[str]) -> None:
        self.path = path
        self.group_names = list(group_names)
        self.columns = ["episode", "reward", "val_accuracy", "val_loss", "macs", "params", "cost_ratio",
                        "seconds"] + [f"keep:{n}" for n in group_names]

    def truncate(self, episodes: int) -> None:
        """Keep the header and the first `episodes` complete rows (a torn last line is dropped).

        Raises:
            AmcError: the file has other columns (a log written by an older amc or for another model).
        """
        lines = self.path.read_text().splitlines(keepends=True) if self.path.exists() else []
        complete = [line for line in lines if line.endswith("\n")]
        if complete and complete[0].rstrip("\r\n") != self._header().rstrip("\r\n"):
            raise AmcError(f"{self.path} has other columns than this search writes (a run of an older amc?); "
                           "start a new run with another --out")
        atomic_write_text(self.path, "".join(complete[: episodes + 1]) if complete else self._header())

    def _header(self) -> str:
        buffer = io.StringIO()
        csv.writer(buffer).writerow(self.columns)
        return buffer.getvalue()

    def append(self, row: list[Any]) -> None:
        """Append one row (as many values as `columns`) and flush it."""
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow(row)
            f.flush()

    def read(self) -> list[dict[str, str]]:
        """Every row as a dict of column -> text."""
        with open(self.path, newline="") as f:
            return list(csv.DictReader(f))

    def counts(self, row: dict[str, str]) -> list[int]:
        """The kept channels of every group in one row, in group order."""
        return [int(row[f"keep:{n}"]) for n in self.group_names]
