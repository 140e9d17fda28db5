"""amc: AutoML for Model Compression. Reinforcement-learned channel pruning of trained CNNs.

The data flow, one name per stage, importable from the package itself:

- `create_model(spec)`: a registered CNN or your own `pkg.mod:factory` / `file.py:factory`;
- `ChannelPruner(model, input_shape)`: the prunable channel groups, exact MAC/param model, pruning;
- `Budget(kind, ratio)` and `Policy`: what to reach and how many channels each group keeps;
- `prepare_task(...)`: model + data set up for a search, with the fast reward evaluation;
- `apply_policy(task, policy)`: the physically pruned model (`PrunedModel`), `.save(path)` to one file;
- `load_model(path)`: a pruned model written by `PrunedModel.save` or `amc apply`.

They are imported on first use, so `import amc` (and the `amc` command's start) stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Budget": "amc.engine.budget",
    "ChannelPruner": "amc.engine.pruner",
    "Policy": "amc.policy",
    "PrunedModel": "amc.models.pruned",
    "apply_policy": "amc.apply",
    "create_model": "amc.models",
    "load_model": "amc.models.pruned",
    "prepare_task": "amc.reward",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from amc.apply import apply_policy  # noqa: F401
    from amc.engine.budget import Budget  # noqa: F401
    from amc.engine.pruner import ChannelPruner  # noqa: F401
    from amc.models import create_model  # noqa: F401
    from amc.models.pruned import PrunedModel, load_model  # noqa: F401
    from amc.policy import Policy  # noqa: F401
    from amc.reward import prepare_task  # noqa: F401


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'amc' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
