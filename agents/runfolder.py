"""The run folder of a search (`runs/NAME/`) and its episode log.

- `config.json`      every argument of the run (`SearchConfig`)
- `episodes.csv`     one row per finished episode: episode, reward, val accuracy, MACs, ..., kept channels
- `best_policy.json` the best policy so far (amc policy schema plus val accuracy)
- `agent.zip`        the SB3 agent at the end
- `checkpoint/`      agent, replay buffer (with its reward baseline), best and random states after the last episode
- `rewards.png`, `best_policy.png`  reward/accuracy per episode; preserve ratio per layer
- `latency.json`     the latency table, for a latency budget or reward (measured once)

Every file is written atomically; a run folder is locked (`.lock`) while a search writes it. `--force`
removes only the files above (`OWN_FILES`), and only from a folder amc recognises as a run folder.
"""

from __future__ import annotations

import csv
import io
import os
import pickle
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from agents.config import read_config_json
from amc.errors import AmcError, one_line
from amc.fileio import atomic_write_bytes, atomic_write_text, check_writable, exclusive_lock

RESULT_FILES = ("episodes.csv", "best_policy.json", "checkpoint", "agent.zip")
# Everything a search writes in its run folder: `--force` removes these and nothing else.
OWN_FILES = ("config.json", "episodes.csv", "best_policy.json", "agent.zip", "agent.tmp.zip", "checkpoint",
             "checkpoint.old", "checkpoint.tmp", "latency.json", "rewards.png", "best_policy.png", "final_selection.json",
             ".lock")


class RunFolder:
    """Files of one run; all writes atomic."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ckpt = path / "checkpoint"

    def has_results(self) -> bool:
        """True when an earlier search wrote results here."""
        return any((self.path / name).exists() for name in RESULT_FILES)

    def is_amc_run(self) -> bool:
        """True when the folder is recognisably a run folder amc wrote: its `config.json` is amc's, or (the
        config damaged) its `episodes.csv` starts with amc's header."""
        try:
            if read_config_json(self.path, fix="") is not None:
                return True
        except AmcError:
            pass
        header = ",".join(EpisodeLog(self.path / "episodes.csv", []).columns).encode()
        try:
            with open(self.path / "episodes.csv", "rb") as f:
                return f.readline().startswith(header)
        except OSError:
            return False

    def check_usable(self) -> None:
        """AmcError when `--out` cannot be a run folder: a file, or a folder holding files amc did not write
        (a search never writes into, or clears, a folder of the user's)."""
        if self.path.exists() and not self.path.is_dir():
            raise AmcError(f"{self.path} is a file; --out names a run folder: choose another --out")
        if not self.path.is_dir():
            return
        entries = sorted(e.name for e in self.path.iterdir())
        if entries and not set(entries) <= {".lock"} and not self.is_amc_run():
            shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
            raise AmcError(f"{self.path} holds files amc did not write ({shown}); a search needs a new or empty "
                           "folder, or a run folder of amc's: choose another --out")

    @contextmanager
    def locked(self) -> Iterator[None]:
        """The folder created if needed and locked for the block: a second search on it is refused at once."""
        check_writable(self.path, folder=True)
        with exclusive_lock(f"run folder {self.path}", self.path / ".lock"):
            yield

    def clear(self) -> None:
        """Remove what earlier searches wrote here (`OWN_FILES`, the lock excepted) and nothing else."""
        for name in OWN_FILES:
            target = self.path / name
            if name == ".lock" or not (target.exists() or target.is_symlink()):
                continue
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink()

    def read_config(self) -> dict[str, Any]:
        """The saved `config.json` of a run to resume.

        Raises:
            AmcError: it is missing or damaged.
        """
        saved = read_config_json(self.path, fix="the run cannot be resumed: start it again with --force")
        if saved is None:
            raise AmcError(f"nothing to resume in {self.path}: it has no config.json; start the run without --resume")
        return saved

    def write_checkpoint(self, agent: Any, state: Any) -> None:
        """Agent, replay buffer and `state` (pickled) into a fresh folder, then swapped in by renames: a kill
        at any moment leaves either the old or the new checkpoint whole (`checkpoint.old` during the swap)."""
        tmp, old = self.path / "checkpoint.tmp", self.path / "checkpoint.old"
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            agent.save(tmp / "agent.zip")
            agent.save_replay_buffer(tmp / "replay.pkl")
            for name in ("agent.zip", "replay.pkl"):  # state.pkl is fsynced by its atomic write
                with open(tmp / name, "rb") as f:
                    os.fsync(f.fileno())
        except OSError as exc:
            raise AmcError(f"cannot write the checkpoint in {self.path} ({exc.strerror or exc}); free some space or "
                           "choose a writable location, then continue with --resume") from None
        atomic_write_bytes(tmp / "state.pkl", pickle.dumps(state))
        if self.ckpt.exists():
            shutil.rmtree(old, ignore_errors=True)
            self.ckpt.rename(old)
        tmp.rename(self.ckpt)
        shutil.rmtree(old, ignore_errors=True)

    def checkpoints(self) -> list[Path]:
        """The checkpoint folders to resume from, newest first: `checkpoint/`, then `checkpoint.old/` (whole
        when a kill came during the swap, or the last good one when the newest is damaged)."""
        return [c for c in (self.ckpt, self.path / "checkpoint.old") if c.is_dir()]


class EpisodeLog:
    """`episodes.csv`: appended one flushed row per episode; cut back to a checkpoint on resume.

    Columns: episode, reward, val_accuracy, val_loss, macs, params, cost_ratio (of the budget's kind),
    seconds, then `keep:NAME`, the integer channels kept in each group (the policy, exactly).
    """

    def __init__(self, path: Path, group_names: list[str]) -> None:
        self.path = path
        self.group_names = list(group_names)
        self.columns = ["episode", "reward", "val_accuracy", "val_loss", "val_images", "macs", "params", "cost_ratio",
                        "seconds"] + [f"keep:{n}" for n in group_names]

    def truncate(self, episodes: int) -> None:
        """Keep the header and the first `episodes` complete rows (a torn last line is dropped).

        Raises:
            AmcError: the file is damaged, has other columns, or holds fewer whole episodes than `episodes`.
        """
        try:
            lines = self.path.read_text().splitlines(keepends=True) if self.path.exists() else []
        except (OSError, UnicodeDecodeError) as exc:
            raise AmcError(f"cannot resume: {self.path} is damaged ({one_line(exc)[:100]}); "
                           "start the run again with --force") from None
        complete = [line for line in lines if line.endswith("\n")]
        if complete and complete[0].rstrip("\r\n") != self._header().rstrip("\r\n"):
            raise AmcError(f"{self.path} has other columns than this search writes (damaged, or a run of an older "
                           "amc); start the run again with --force or choose another --out")
        whole = 0  # rows 1..whole are complete, in order
        for number, line in enumerate(complete[1 : episodes + 1], start=1):
            fields = next(csv.reader([line]))
            if len(fields) != len(self.columns) or fields[0] != str(number):
                break
            whole = number
        if whole < episodes:
            raise AmcError(f"cannot resume: {self.path} holds {whole} whole episodes but the checkpoint is at episode "
                           f"{episodes} (the log was cut or edited); restore it, or start the run again with --force")
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
            os.fsync(f.fileno())  # the log never falls behind a checkpoint, even after a power cut

    def read(self) -> list[dict[str, str]]:
        """Every row as a dict of column -> text."""
        with open(self.path, newline="") as f:
            return list(csv.DictReader(f))

    def counts(self, row: dict[str, str]) -> list[int]:
        """The kept channels of every group's producer in one row, in group order (a group cut into sections
        counts every section: divide by `ChannelGroup.sections` for the pruner's counts)."""
        return [int(row[f"keep:{n}"]) for n in self.group_names]

    def unit_counts(self, row: dict[str, str], sections: Sequence[int]) -> np.ndarray:
        """The pruner's kept counts [G] of one row: `counts` divided by each group's `sections`."""
        return np.array(self.counts(row)) // np.asarray(sections)
