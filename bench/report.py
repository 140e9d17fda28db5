"""What every benchmark writes: `bench/results/NAME.json` and a short Markdown table `NAME.md`."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from amc.fileio import atomic_write_json, atomic_write_text  # noqa: E402


def machine(threads: int) -> str:
    """The machine a number was measured on, in words."""
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {threads}"


def command(script: str) -> str:
    """The command line that reproduces this run."""
    return f"python bench/{script} " + " ".join(sys.argv[1:])


def write(name: str, report: dict[str, Any], lines: list[str]) -> None:
    """Write the JSON report and the Markdown lines under bench/results/, and print the table."""
    out = ROOT / "bench" / "results" / name
    atomic_write_json(out.with_suffix(".json"), report)
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
