"""Deprecated import path, kept so that scripts written against amc's first layout still run: use `amc.reward`."""

import warnings

from amc.models.trained import TrainedModel, load_trained_model  # noqa: F401
from amc.reward import Evaluation, RewardEvaluator, Task, prepare_task  # noqa: F401

warnings.warn("amc.task is deprecated; import from amc.reward instead", DeprecationWarning, stacklevel=2)
