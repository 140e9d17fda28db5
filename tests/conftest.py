"""Fixtures and helpers shared by the test files; markers are registered in pyproject.toml.

- `slow`: tests that run whole processes or searches (seconds to a minute each); `-m "not slow"` skips them.
- `realdata`: tests on the real CIFAR-10 copy and pretrained checkpoints of `../shared`; they skip when
  `AMC_CIFAR_DIR` (an extracted `cifar10-jpg.tar.gz`) or the weights are absent. The default run (CI) runs all.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from amc.errors import AmcError

# The pretrained checkpoints of `../shared/weights`, beside the repository.
WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights"


def real_checkpoint(name: str) -> Path:
    """`../shared/weights/{name}-cifar10jpg.pt`, or skip the test."""
    path = WEIGHTS / f"{name}-cifar10jpg.pt"
    if not path.is_file():
        pytest.skip(f"pretrained checkpoint {path} absent (it lives in ../shared beside the clone)")
    return path


def cifar_dir() -> str:
    """The extracted real CIFAR-10 image folder ($AMC_CIFAR_DIR), or skip the test."""
    data_dir = os.environ.get("AMC_CIFAR_DIR")
    if not data_dir:
        pytest.skip("needs AMC_CIFAR_DIR: the extracted ../shared/data/cifar10-jpg.tar.gz")
    return data_dir


def rows(run: Path) -> list[dict[str, str]]:
    """A run folder's `episodes.csv` without the wall-clock column (which differs between identical runs)."""
    with open(run / "episodes.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


def assert_one_line(message: str | BaseException, *fragments: str) -> None:
    """An error message of one line containing every fragment."""
    text = str(message)
    assert "\n" not in text.strip() and "Traceback" not in text, text
    for fragment in fragments:
        assert fragment in text, text


def assert_user_error(code: int, err: str, *fragments: str) -> None:
    """What the CLI does with bad input: exit code 2 and a single `amc: error:` line naming the problem, last
    (one-line warnings may come before it)."""
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if not line.startswith("amc: warning: ")]
    assert len(lines) == 1 and lines[0].startswith("amc: error: "), err
    assert err.strip().splitlines()[-1] == lines[0], err  # the error is the last line, on a line of its own
    assert_one_line(lines[0], *fragments)


@pytest.fixture(scope="session")
def digits_task():
    """The embedded digits model and data, analysed once for every test that searches or evaluates."""
    from amc.models.zoo import digits_checkpoint
    from amc.reward import prepare_task

    return prepare_task("digits_cnn", digits_checkpoint(), "digits", seed=0)


__all__ = ["AmcError", "WEIGHTS", "assert_one_line", "assert_user_error", "cifar_dir", "real_checkpoint", "rows"]
