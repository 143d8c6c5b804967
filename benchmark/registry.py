"""Registries: names users type, mapped to what they name.

One idiom serves every extension point (methods, evaluation protocols, executors, optimisers,
view presets): ``Registry.register(name)`` as a decorator or a call, ``Registry.get(name)`` with
one "unknown X 'name'; known Xs: ..." message, ``Registry.names()``.

SSL methods have a registry of their own kind (``register_method``): built-in methods are the
modules of ``methods/`` (``benchmark.methods``), found automatically; external packages add
theirs through the entry-point group ``ssl3d.methods`` (``name = package.module:Class``).
Adding a method never edits the harness.
"""

from __future__ import annotations

import copy
import importlib
import pkgutil
from collections.abc import Callable, Iterator
from importlib import metadata, resources
from pathlib import Path
from typing import Any, Generic, TypeVar

from benchmark.errors import UserError

T = TypeVar("T")

ENTRY_POINT_GROUP = "ssl3d.methods"


class UnknownNameError(UserError):
    """A name that no entry of a registry has."""


class UnknownMethodError(UnknownNameError):
    """A method name that no built-in module or installed plugin registers."""


class Registry(Generic[T]):
    """Entries of one kind by name.

    Args:
        kind: what an entry is, in words ("method", "protocol", "executor", ...).
        setting: where users type the name (``pretrain.optimizer``), named in the error.
        error: the exception class an unknown name raises.
    """

    def __init__(self, kind: str, setting: str = "", error: type[UserError] = UnknownNameError):
        self.kind, self.setting, self.error = kind, setting, error
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T | None = None) -> Any:
        """Add ``entry`` under ``name``; without ``entry`` a decorator that adds what it
        decorates. A name taken by another entry is an error."""

        def add(value: T) -> T:
            existing = self._entries.get(name)
            # The same class imported twice (a module reloaded, a file reached by two paths) is
            # no conflict; two different classes are.
            if existing is not None and _qualname(existing, False) != _qualname(value, False):
                raise ValueError(
                    f"{self.kind} name {name!r} is registered twice: by {_qualname(existing)} "
                    f"and by {_qualname(value)}"
                )
            self._entries[name] = value
            return value

        return add if entry is None else add(entry)

    def get(self, name: str) -> T:
        """The entry registered under ``name``; an unknown name lists the known ones."""
        if name not in self._entries:
            where = f" (setting {self.setting})" if self.setting else ""
            raise self.error(
                f"unknown {self.kind} '{name}'{where}; known {self.kind}s: "
                f"{', '.join(sorted(self._entries))}"
            )
        return self._entries[name]

    def names(self) -> list[str]:
        """Registered names in registration order."""
        return list(self._entries)

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(list(self._entries.items()))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def copy(self) -> Registry[T]:
        """A registry with the same entries (changes to it leave this one alone)."""
        twin = copy.copy(self)
        twin._entries = dict(self._entries)
        return twin


def _qualname(value: Any, with_module: bool = True) -> str:
    name = getattr(value, "__qualname__", repr(value))
    return f"{getattr(value, '__module__', '')}.{name}" if with_module else name


class MethodRegistry(Registry[type]):
    """SSL method classes by name: the modules of ``methods/`` and the ``ssl3d.methods`` entry
    points, discovered on first use."""

    def __init__(self):
        super().__init__("method", error=UnknownMethodError)
        self.discovered = False

    def discover(self) -> None:
        """Import every built-in method module and load every entry-point plugin (once)."""
        if self.discovered:
            return
        self.discovered = True
        builtin = importlib.import_module("benchmark.methods")
        for module in pkgutil.iter_modules(builtin.__path__):
            importlib.import_module(f"{builtin.__name__}.{module.name}")
        for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
            cls = entry_point.load()
            if getattr(cls, "name", None) not in self:
                register_method(entry_point.name)(cls)

    def get(self, name: str) -> type:
        self.discover()
        return super().get(name)

    def items(self) -> Iterator[tuple[str, type]]:
        self.discover()
        return super().items()


METHODS = MethodRegistry()


def register_method(name: str) -> Callable[[type], type]:
    """Class decorator: make an ``SSLMethod`` subclass available under ``name``.

    >>> @register_method("byol")
    ... class BYOL(SSLMethod):
    ...     '''Bootstrap Your Own Latent: predictor + EMA target (Grill et al. 2020).'''
    """
    if not name.isidentifier():
        raise ValueError(f"method name {name!r} must be a Python identifier (a-z, 0-9, _)")

    def register(cls: type) -> type:
        METHODS.register(name, cls)
        cls.name = name
        return cls

    return register


def available_methods() -> dict[str, type]:
    """Every registered ``SSLMethod`` class, built-in first, by name."""
    return dict(METHODS.items())


def get_method(name: str) -> type:
    """The ``SSLMethod`` class registered under ``name``; an unknown name lists the known ones."""
    return METHODS.get(name)


def method_config_file(name: str, cls: type) -> Path | None:
    """The YAML of a method's hyper-parameters: the class's ``config_file`` if it names one,
    else ``configs/methods/<name>.yaml``; None when the method has no settings."""
    if getattr(cls, "config_file", None):
        return Path(cls.config_file)
    path = resources.files("benchmark.configs") / "methods" / f"{name}.yaml"
    return Path(str(path)) if path.is_file() else None
