"""Pictures of a search: reward and accuracy per episode, and the best policy's preserve ratios."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_run(rows: list[dict[str, str]], best: dict[str, Any] | None, names: list[str], out: Path) -> None:
    """Write `rewards.png` (reward and val accuracy per episode) and `best_policy.png` (the best
    policy's preserve ratio per group, AMC's figure) into the run folder `out`."""
    episodes = [int(r["episode"]) for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    top.plot(episodes, [float(r["reward"]) for r in rows], ".", markersize=3)
    top.set_ylabel("reward")
    bottom.plot(episodes, [100 * float(r["val_accuracy"]) for r in rows], ".", markersize=3, color="tab:green")
    bottom.set_ylabel("val accuracy (%)")
    bottom.set_xlabel("episode")
    fig.tight_layout()
    fig.savefig(out / "rewards.png", dpi=100)
    plt.close(fig)
    if not best:
        return
    ratios = [g["keep"] / g["channels"] for g in best["groups"]]
    fig, ax = plt.subplots(figsize=(max(6, 0.3 * len(names)), 4))
    ax.bar(range(len(ratios)), ratios)
    ax.set_xticks(range(len(ratios)), [g["name"] for g in best["groups"]], rotation=90, fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("preserve ratio")
    ax.set_title(f"best policy: val accuracy {100 * best.get('val_accuracy', 0):.2f}%")
    fig.tight_layout()
    fig.savefig(out / "best_policy.png", dpi=100)
    plt.close(fig)
