"""The README's Python API runs as written, on the embedded digits model, to the saved pruned model."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def python_api_block() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_python_api_runs_as_written(tmp_path):
    code = python_api_block()
    assert code.rstrip().splitlines()[-1].startswith("pruned.save(")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    import amc

    model = amc.load_model(tmp_path / "digits-pruned.pt")
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    assert (tmp_path / "runs" / "api-demo" / "best_policy.json").is_file()
