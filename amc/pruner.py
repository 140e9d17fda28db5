"""Deprecated import path, kept so that scripts written against amc's first layout still run: use `amc.engine.pruner`."""

import warnings

from amc.engine import SELECTIONS, Selection  # noqa: F401
from amc.engine.pruner import ChannelPruner  # noqa: F401

warnings.warn("amc.pruner is deprecated; import from amc.engine.pruner instead", DeprecationWarning, stacklevel=2)
