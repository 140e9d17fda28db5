"""What every benchmark writes: `bench/results/NAME.json` and a short Markdown table `NAME.md`."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from amc.engine.measure import cpu_latencies  # noqa: E402
from amc.fileio import atomic_write_json, atomic_write_text  # noqa: E402

# (key, batch size, channels-last) of every latency a benchmark reports
LATENCY_SETTINGS = (("1", 1, False), ("64", 64, False), ("1 cl", 1, True), ("64 cl", 64, True))


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


def latencies(models: list[Any], shape: tuple[int, ...]) -> list[dict[str, dict[str, float]]]:
    """Per model: `latency_ms` (median CPU ms) and `speedup` over the first model, keyed by
    `LATENCY_SETTINGS`; the models are timed as deployed, in interleaved rounds (`cpu_latencies`)."""
    ms: list[dict[str, float]] = [{} for _ in models]
    for key, batch, channels_last in LATENCY_SETTINGS:
        for row, value in zip(ms, cpu_latencies(models, shape, batch, channels_last=channels_last)):
            row[key] = value
    return [{"latency_ms": m, "speedup": {key: ms[0][key] / m[key] for key in m}} for m in ms]


def latency_cells(row: dict[str, Any]) -> str:
    """Markdown cells `ms @1 | ms @64 | speed-up @1 | speed-up @64`, each contiguous / channels-last."""
    ms, up = row["latency_ms"], row["speedup"]
    return (f"{ms['1']:.2f} / {ms['1 cl']:.2f} | {ms['64']:.1f} / {ms['64 cl']:.1f} | "
            f"{up['1']:.2f}x / {up['1 cl']:.2f}x | {up['64']:.2f}x / {up['64 cl']:.2f}x |")
