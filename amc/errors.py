"""User-facing errors: a problem the user can fix, reported as one line by the CLI (exit code 2)."""

from __future__ import annotations

from collections.abc import Sequence

SHOWN = 3


class AmcError(Exception):
    """A problem with the user's input. The message names the problem and the fix, in one line."""


def one_line(exc: BaseException) -> str:
    """`Type: message` of an exception on one line (every run of whitespace, newlines included, becomes one
    space); just `Type` when the message is empty."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def first(names: Sequence[str], shown: int = SHOWN) -> str:
    """The first `shown` names joined by commas, and how many more there are: `a, b, c (+4 more)`."""
    listed = ", ".join(names[:shown])
    return listed if len(names) <= shown else f"{listed} (+{len(names) - shown} more)"
