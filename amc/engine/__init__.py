"""The pruning engine: channel groups (`groups`), the MACs/params cost model (`cost`), budgets (`budget`),
channel ranking (`ranking`), the pruner (`pruner`), least-squares reconstruction and BatchNorm
re-estimation (`reconstruct`), measuring (`measure`) and per-layer latency tables (`latency`).

It imports only torch, Torch-Pruning, numpy and `amc.errors`: no data set, reward, agent or command line
(a test enforces this), so it can be used on any model and any data a caller brings.

`SELECTIONS` names the channel-ranking criteria (`amc.engine.ranking`); it lives here, free of heavy
imports, so the command line can offer it without loading torch.
"""

from typing import Literal

Selection = Literal["ls", "l1", "l2", "bn"]
SELECTIONS: tuple[str, ...] = ("ls", "l1", "l2", "bn")
