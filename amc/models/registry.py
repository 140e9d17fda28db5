"""Model registry and factory: build a model from a registered name, `package.module:factory` or `file.py:factory`."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
import uuid
from pathlib import Path
from types import ModuleType
from typing import Callable, TypeVar

import torch.nn as nn

from amc.errors import AmcError, one_line

ModelFactory = Callable[..., nn.Module]
FactoryT = TypeVar("FactoryT", bound=ModelFactory)

_REGISTRY: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[FactoryT], FactoryT]:
    """Decorator registering `factory(num_classes: int = 10) -> nn.Module` under `name`."""

    def decorate(factory: FactoryT) -> FactoryT:
        if name in _REGISTRY:
            raise ValueError(f"model name {name!r} is registered twice")
        _REGISTRY[name] = factory
        return factory

    return decorate


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def create_model(spec: str, num_classes: int | None = None) -> nn.Module:
    """Build a model from `spec`, in training mode with fresh (untrained) weights.

    Args:
        spec: a registered name (see `list_models()`), `package.module:factory`, or `path/to/file.py:factory`.
        num_classes: number of outputs of the classifier; None keeps the factory's default. A user factory
            receives it only when it has a `num_classes` parameter.

    Raises:
        AmcError: unknown name, unimportable module or file, missing factory, factory failure, or a factory
            that does not return an `nn.Module`.
    """
    if ":" not in spec:
        if spec not in _REGISTRY:
            raise AmcError(
                f"unknown model {spec!r}; use one of {', '.join(list_models())}, "
                "or your own as package.module:factory or path/to/file.py:factory"
            )
        factory = _REGISTRY[spec]
        return _call_factory(factory, spec, {} if num_classes is None else {"num_classes": num_classes})

    # rpartition keeps Windows drive letters (C:\m.py:factory) in the location part
    location, _, attr = spec.rpartition(":")
    module = _load_file(location, spec) if location.endswith(".py") else _import_module(location, spec)
    factory = getattr(module, attr, None)
    if factory is None:
        raise AmcError(
            f"model spec {spec}: {location} has no attribute {attr!r}; name a factory function defined there"
        )
    if not callable(factory):
        raise AmcError(f"model spec {spec}: {attr!r} is not callable; name a function that returns an nn.Module")
    kwargs = {"num_classes": num_classes} if num_classes is not None and _accepts_num_classes(factory) else {}
    return _call_factory(factory, spec, kwargs)


def _accepts_num_classes(factory: ModelFactory) -> bool:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # builtins and some C callables have no signature
        return False
    param = params.get("num_classes")
    return param is not None and param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY)


def _call_factory(factory: ModelFactory, spec: str, kwargs: dict[str, int]) -> nn.Module:
    try:
        model = factory(**kwargs)
    except (Exception, SystemExit) as exc:  # user code may even call sys.exit()
        raise AmcError(f"model factory {spec} failed: {one_line(exc)}; fix the factory or pick another model") from exc
    if not isinstance(model, nn.Module):
        raise AmcError(
            f"model factory {spec} returned {type(model).__name__}, not a torch.nn.Module; make it return the model"
        )
    return model


def _import_module(name: str, spec: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except (Exception, SystemExit) as exc:
        raise AmcError(
            f"model spec {spec}: cannot import module {name!r} ({one_line(exc)}); "
            "install it or give a file instead as path/to/file.py:factory"
        ) from exc


def _load_file(location: str, spec: str) -> ModuleType:
    path = Path(location).expanduser().resolve()
    if not path.is_file():
        raise AmcError(f"model spec {spec}: file {location} not found; check the path before the ':'")
    # A unique name lets two user files share a stem; sys.modules must hold it while the file runs
    # (dataclasses and typing look their module up there), but the file's folder never joins sys.path.
    name = f"amc_user_model_{path.stem}_{uuid.uuid4().hex[:8]}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise AmcError(f"model spec {spec}: cannot load {location} as Python; give a .py file")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        del sys.modules[name]
        raise AmcError(f"model spec {spec}: running {location} failed: {one_line(exc)}; fix the file") from exc
    return module


def portable_spec(spec: str) -> str:
    """`spec` as a file that travels records it: a `path/to/file.py:factory` whose file exists becomes an
    absolute path (a relative one would only resolve from the folder it was typed in); other specs unchanged."""
    location, sep, factory = spec.rpartition(":")
    if sep and location.endswith(".py") and Path(location).expanduser().is_file():
        return f"{Path(location).expanduser().resolve()}:{factory}"
    return spec
