"""User-facing errors: a problem the user can fix, reported as one line by the CLI (exit code 2)."""


class AmcError(Exception):
    """A problem with the user's input. The message names the problem and the fix, in one line."""
