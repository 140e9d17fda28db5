"""Files amc writes: atomic writes, a writability check before the work, and locks for one writer.

Each writer fills a temporary file in the target's folder, flushes and fsyncs it, then `os.replace`s it
onto the target. A reader, or a run killed mid-write, therefore sees either the old file or the complete
new one, never a torn one. Missing parent folders are created. `check_writable` finds an unwritable or
full location before any work is done; `exclusive_lock` keeps a second amc process off a run folder or an
output while the first writes it.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from amc.errors import AmcError


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to; on normal exit it is fsynced and replaces `path`,
    on an exception it is removed and `path` is left as it was."""
    path = Path(path)
    # A unique name in the same folder keeps os.replace a rename within one filesystem (atomic) and
    # lets concurrent writers of one target not clobber each other's temporary file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise AmcError(f"cannot write {path} ({exc.strerror or exc}); choose a writable location") from exc
    except RuntimeError as exc:  # torch.save reports a failed open or write (full disk) as RuntimeError
        if not _is_write_failure(exc):
            raise
        raise AmcError(f"cannot write {path} ({_first_line(exc)}); choose a writable location with free space") from exc
    finally:
        tmp.unlink(missing_ok=True)


def _is_write_failure(exc: RuntimeError) -> bool:
    text = str(exc)
    return any(mark in text for mark in ("inline_container", "PytorchStreamWriter", "open file failed", "unexpected pos"))


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0][:160] if lines else type(exc).__name__


def check_writable(path: str | Path, *, folder: bool = False) -> None:
    """AmcError now, before any work, when `path` (a file to write, or with `folder` a folder to fill) cannot
    be written: its folder cannot be created, is read-only, or has no free space for a small file. A
    directory where a file is wanted, or a file where a folder is wanted, is refused too."""
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise AmcError(f"{path} is a file; --out names a folder here: choose another --out")
    if not folder and path.is_dir():
        raise AmcError(f"{path} is a folder; --out names a file here: choose another --out")
    where = path if folder else path.parent
    probe = where / f".amc-write-test.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    try:
        where.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise AmcError(f"cannot write {path} ({exc.strerror or exc}); choose a writable location with free space") from None
    finally:
        try:
            probe.unlink(missing_ok=True)
        except OSError:
            pass


@contextmanager
def exclusive_lock(target: str | Path, lock_file: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on `lock_file` for the block; AmcError at once when another process holds it.
    `target` is what the lock protects, named in the error.

    The lock is `fcntl.flock`, so it dies with its process: a killed run leaves at most a lock file, never a
    stale lock. The file is removed on release; a process that locked a file just removed by its holder sees
    that the path no longer names its file and tries again, so two processes never both hold the lock.
    """
    import fcntl

    lock_file = Path(lock_file)
    while True:
        try:
            lock_file.parent.mkdir(parents=True, exist_ok=True)
            handle = open(lock_file, "a+")
        except OSError as exc:
            raise AmcError(f"cannot write {target} ({exc.strerror or exc}); choose a writable location") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise AmcError(f"{target} is in use by another amc process ({holder}); wait for it to finish "
                           "or choose another --out") from None
        try:
            same = os.fstat(handle.fileno()).st_ino == os.stat(lock_file).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        handle.close()  # the holder removed the file between our open and our lock: lock the new one
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        yield
    finally:
        lock_file.unlink(missing_ok=True)
        handle.close()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` atomically, UTF-8 encoded, newlines as given."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write `obj` as JSON (indent 2, trailing newline) to `path` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def atomic_copy(source: str | Path, path: str | Path) -> None:
    """Copy the file `source` to `path` atomically (contents and permission bits)."""
    with atomic_path(path) as tmp:
        shutil.copyfile(source, tmp)
        shutil.copymode(source, tmp)


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """`torch.save(obj)` to `path` atomically (argument order as `torch.save`)."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
