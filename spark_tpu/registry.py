"""Registries: the names the launcher and `spark_tpu.simulate` accept (docs/extending.md §1).

A `Registry` maps a name to an object (an algorithm spec, a model factory, a graph constructor, a
partitioner, a data set loader). Every built-in registers itself in the module that defines it, so a
new one is one file plus one registration line; nothing else in the package lists them.

Anything registered can also be named by import path, ``package.module:attribute``, so a
researcher's own object in their own package runs from the launcher without forking the repo::

    python -m launch_tpu.main --algorithm=my_pkg.tracking:build

An import path is imported on first use and then cached under that name.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")

_DOTTED = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
_IMPORT_PATH = re.compile(f"{_DOTTED}:{_DOTTED}")


def is_import_path(name: str) -> bool:
    """True for ``package.module:attribute``: dotted identifiers on both sides of one colon (so a
    tfds ``name:version`` such as ``mnist:3.0.1`` is not one).

    Examples:
      >>> is_import_path("my_pkg.nets:build"), is_import_path("mnist:3.0.1"), is_import_path("mlp")
      (True, False, False)
    """
    return isinstance(name, str) and _IMPORT_PATH.fullmatch(name) is not None


def accepts(fn: Callable[..., Any], keyword: str) -> bool:
    """Whether ``fn`` takes the keyword argument ``keyword`` (any, with ``**kwargs``).

    Examples:
      >>> accepts(lambda x, *, seed=0: x, "seed"), accepts(lambda x: x, "seed")
      (True, False)
    """
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # no signature to read (some builtins): assume it does
        return True
    return any(
        p.kind is p.VAR_KEYWORD
        or (p.name == keyword and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))
        for p in parameters
    )


def call_with(fn: Callable[..., Any], *args, **options):
    """``fn(*args, **options)`` with only the keywords ``fn`` takes: a registered function reads
    the run options it needs and ignores the rest.

    Examples:
      >>> call_with(lambda x, *, seed: x + seed, 1, seed=2, data_dir=None)
      3
    """
    return fn(*args, **{k: v for k, v in options.items() if accepts(fn, k)})


def import_object(path: str, flag: str = "name"):
    """The object at ``package.module:attribute`` (dotted attributes allowed).

    Raises:
      ValueError: one line naming the flag, the path and what failed.

    Examples:
      >>> import_object("math:pi") > 3.14
      True
    """
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"--{flag}={path}: an import path is 'package.module:attribute'.")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(
            f"--{flag}={path}: cannot import {module_name!r} ({e}); is its package installed or "
            "on PYTHONPATH?"
        ) from None
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"--{flag}={path}: module {module_name!r} has no {attribute!r}.")
        obj = getattr(obj, part)
    return obj


class Registry(Generic[T]):
    """Names → objects of one kind, with one-line errors that list the choices.

    Args:
      kind: what is registered, for messages ("algorithm").
      flag: the launcher flag that names one (``--algorithm``), for messages.
      convert: applied to an object loaded by import path (e.g. to wrap a plain build function
        in an ``AlgorithmSpec``); it receives ``(path, object)``.

    Examples:
      >>> colours = Registry("colour", "colour")
      >>> _ = colours.register("red", (255, 0, 0))
      >>> colours.get("red")
      (255, 0, 0)
      >>> colours.get("blue")
      Traceback (most recent call last):
      ...
      ValueError: --colour=blue: choose one of red, or give an import path package.module:attribute (an unknown colour).
    """

    def __init__(self, kind: str, flag: str, convert: Callable[[str, object], T] | None = None):
        self.kind = kind
        self.flag = flag
        self._convert = convert
        self._items: dict[str, T] = {}
        self._aliases: dict[str, str] = {}
        self._imported: dict[str, T] = {}
        self._hidden: set[str] = set()

    def register(
        self, name: str, obj: T, *, aliases: tuple[str, ...] = (), replace: bool = False,
        hidden: bool = False,
    ):
        """Registers ``obj`` under ``name`` (and ``aliases``); returns ``obj``.

        Registering the same object again is a no-op; another object under a taken name is an
        error unless ``replace``. A ``hidden`` name works everywhere but is not listed (in
        `names`, error messages and ``--help``).
        """
        for key in (name, *aliases):
            taken = self._items.get(self._aliases.get(key, key))
            if taken is not None and taken is not obj and not replace:
                raise ValueError(f"a {self.kind} named {key!r} is already registered.")
        self._items[name] = obj
        for alias in aliases:
            self._aliases[alias] = name
        if hidden:
            self._hidden.add(name)
        else:
            self._hidden.discard(name)
        return obj

    def unregister(self, name: str) -> None:
        """Removes ``name`` and its aliases (for tests and interactive sessions)."""
        self._items.pop(name, None)
        self._hidden.discard(name)
        for alias in [a for a, target in self._aliases.items() if target == name]:
            del self._aliases[alias]

    def canonical(self, name: str) -> str:
        """The registered name for an alias (the name itself otherwise)."""
        return self._aliases.get(name, name)

    def __contains__(self, name: str) -> bool:
        return self.canonical(name) in self._items or name in self._imported

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def names(self) -> tuple[str, ...]:
        """Listed names, in registration order (no hidden ones, aliases or import paths)."""
        return tuple(name for name in self._items if name not in self._hidden)

    # Read like a mapping of the listed names (``dict(registry)``, ``registry[name]``).
    def keys(self) -> tuple[str, ...]:
        return self.names()

    def values(self) -> list[T]:
        return [self._items[name] for name in self.names()]

    def items(self) -> list[tuple[str, T]]:
        return [(name, self._items[name]) for name in self.names()]

    def __getitem__(self, name: str) -> T:
        try:
            return self._items[self.canonical(name)]
        except KeyError:
            raise KeyError(self._unknown(name)) from None

    def get(self, name: str) -> T:
        """The object called ``name``: a registered name, an alias or an import path."""
        key = self.canonical(name)
        if key in self._items:
            return self._items[key]
        if is_import_path(name):
            if name not in self._imported:
                obj = import_object(name, self.flag)
                self._imported[name] = self._convert(name, obj) if self._convert else obj
            return self._imported[name]
        raise ValueError(self._unknown(name))

    def _unknown(self, name: str) -> str:
        return (
            f"--{self.flag}={name}: choose one of {', '.join(self.names())}, or give an import "
            f"path package.module:attribute (an unknown {self.kind})."
        )
