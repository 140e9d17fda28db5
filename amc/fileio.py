"""Atomic file writes: every file amc writes goes through these.

Each writer fills a temporary file in the target's folder, flushes and fsyncs it, then `os.replace`s it
onto the target. A reader, or a run killed mid-write, therefore sees either the old file or the complete
new one, never a torn one. Missing parent folders are created.
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
    finally:
        tmp.unlink(missing_ok=True)


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
