"""The method registry: names users type, mapped to SSL method classes.

Built-in methods are the modules of ``methods/`` (``benchmark.methods``), found automatically;
external packages add theirs through the entry-point group ``ssl3d.methods``
(``name = package.module:Class``). Adding a method never edits the harness.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from importlib import metadata, resources
from pathlib import Path
from typing import TYPE_CHECKING

from benchmark.errors import UserError

if TYPE_CHECKING:
    from benchmark.method import SSLMethod

ENTRY_POINT_GROUP = "ssl3d.methods"

_METHODS: dict[str, type[SSLMethod]] = {}
_discovered = False


class UnknownMethodError(UserError):
    """A method name that no built-in module or installed plugin registers."""


def register_method(name: str) -> Callable[[type[SSLMethod]], type[SSLMethod]]:
    """Class decorator: make an ``SSLMethod`` subclass available under ``name``.

    >>> @register_method("byol")
    ... class BYOL(SSLMethod):
    ...     '''Bootstrap Your Own Latent: predictor + EMA target (Grill et al. 2020).'''
    """

    def register(cls: type[SSLMethod]) -> type[SSLMethod]:
        if not name.isidentifier():
            raise ValueError(f"method name {name!r} must be a Python identifier (a-z, 0-9, _)")
        existing = _METHODS.get(name)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise ValueError(
                f"method name {name!r} is registered twice: by {existing.__module__}."
                f"{existing.__qualname__} and by {cls.__module__}.{cls.__qualname__}"
            )
        cls.name = name
        _METHODS[name] = cls
        return cls

    return register


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    import benchmark.methods as builtin

    for module in pkgutil.iter_modules(builtin.__path__):
        importlib.import_module(f"{builtin.__name__}.{module.name}")
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        cls = entry_point.load()
        if getattr(cls, "name", None) not in _METHODS:
            register_method(entry_point.name)(cls)


def available_methods() -> dict[str, type[SSLMethod]]:
    """Every registered method, built-in first, by name."""
    _discover()
    return dict(_METHODS)


def get_method(name: str) -> type[SSLMethod]:
    """The class registered under ``name``; an unknown name lists the known ones."""
    methods = available_methods()
    if name not in methods:
        raise UnknownMethodError(
            f"unknown method '{name}'; known methods: {', '.join(sorted(methods))}"
        )
    return methods[name]


def method_config_file(name: str, cls: type[SSLMethod]) -> Path | None:
    """The YAML of a method's hyper-parameters: the class's ``config_file`` if it names one,
    else ``configs/methods/<name>.yaml``; None when the method has no settings."""
    if getattr(cls, "config_file", None):
        return Path(cls.config_file)
    path = resources.files("benchmark.configs") / "methods" / f"{name}.yaml"
    return Path(str(path)) if path.is_file() else None
