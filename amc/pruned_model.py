"""Deprecated import path, kept so that scripts written against amc's first layout still run: use `amc.models.pruned`."""

import warnings

from amc.models.pruned import PRUNED_FORMAT, PrunedModel, load_model, read_model_info, save_pruned  # noqa: F401

warnings.warn("amc.pruned_model is deprecated; import from amc.models.pruned instead", DeprecationWarning, stacklevel=2)
