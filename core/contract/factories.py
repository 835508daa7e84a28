"""A spec's factory as core calls it: a callable, or a ``"package.module:Attribute"`` string imported on first use.

A string keeps registration free of TensorFlow and Keras without a shim function in the plugin: the module named
is imported only when a run builds the algorithm, dataset or backbone. An algorithm's factory also refuses a
task of a kind its spec does not declare, so no implementation has to check ``task.kind`` itself.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from typing import Any, Callable

__all__ = ["SpecFactory", "FactoryResolutionError", "factory_problem", "wrap_factory"]

_DOTTED = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
_REFERENCE_RE = re.compile(rf"^({_DOTTED}):({_DOTTED})$")


class FactoryResolutionError(ImportError):
    """A factory given as ``"package.module:Attribute"`` names no importable callable; the message names the spec."""


class SpecFactory:
    """The factory of one spec, called the way the spec's declaration says.

    Args:
        target: The declared factory: a callable, or a ``"package.module:Attribute"`` string.
        owner: What the factory belongs to, for messages, e.g. ``"AlgorithmSpec 'metalab_foo.foo'"``.
        task_kinds: For an algorithm, the task kinds its spec declares; a call with a task of another kind is
            refused before the factory runs. ``None`` checks nothing.
    """

    def __init__(self, target: Any, owner: str, task_kinds: tuple[str, ...] | None = None):
        self.target = target
        self.owner = owner
        self.task_kinds = None if task_kinds is None else tuple(task_kinds)
        self._resolved: Callable[..., Any] | None = None if isinstance(target, str) else target

    @property
    def reference(self) -> str | None:
        """The ``"package.module:Attribute"`` string, or ``None`` for a factory given as a callable."""
        return self.target if isinstance(self.target, str) else None

    @property
    def name(self) -> str:
        """Where the factory lives, for messages: the reference string, or the callable's module and name."""
        if self.reference is not None:
            return self.reference
        module = getattr(self.target, "__module__", None)
        qualname = getattr(self.target, "__qualname__", None) or type(self.target).__name__
        return f"{module}.{qualname}" if module else qualname

    def resolve(self) -> Callable[..., Any]:
        """Imports the referenced attribute on first use (later calls reuse it) and returns the callable.

        Raises:
            FactoryResolutionError: If the string is malformed, its module does not import, the module lacks the
                attribute, or the attribute is not callable; the message names the spec and the string.
        """
        if self._resolved is not None:
            return self._resolved
        reference = self.target
        match = _REFERENCE_RE.match(reference)
        if match is None:
            raise self._error("is not of the form 'package.module:Attribute'")
        module_name, attribute = match.groups()
        try:
            found: Any = importlib.import_module(module_name)
        except Exception as exc:  # noqa: BLE001 - any import failure is this spec's unusable factory
            raise self._error(f"does not resolve: importing {module_name!r} failed with "
                              f"{type(exc).__name__}: {exc}") from exc
        for part in attribute.split("."):
            if not hasattr(found, part):
                raise self._error(f"does not resolve: {module_name!r} has no attribute {attribute!r}")
            found = getattr(found, part)
        if not callable(found):
            raise self._error(f"names {type(found).__name__} {attribute!r}, which is not callable")
        self._resolved = found
        return found

    def _error(self, problem: str) -> FactoryResolutionError:
        return FactoryResolutionError(
            f"{self.owner}: its factory {self.target!r} {problem}. Give 'package.module:Attribute' naming a class or "
            f"function of an installed module. Received: factory={self.target!r}"
        )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.task_kinds is not None:
            task = args[1] if len(args) > 1 else kwargs.get("task")
            kind = getattr(task, "kind", None)
            if task is not None and kind not in self.task_kinds:
                raise ValueError(
                    f"{self.owner} supports {' and '.join(self.task_kinds)} tasks (its task_kinds), not {kind}. "
                    f"Received: task.kind={kind!r}"
                )
        return self.resolve()(*args, **kwargs)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SpecFactory):
            return NotImplemented
        return (self.target, self.task_kinds) == (other.target, other.task_kinds)

    def __hash__(self) -> int:
        try:
            key = hash(self.target)
        except TypeError:  # an unhashable callable object
            key = id(self.target)
        return hash((key, self.task_kinds))

    def __repr__(self) -> str:
        return f"SpecFactory({self.name})"


def wrap_factory(target: Any, owner: str, task_kinds: tuple[str, ...] | None = None) -> SpecFactory:
    """A :class:`SpecFactory` for a spec's declared factory (unwrapping one made for an earlier copy of the spec)."""
    if isinstance(target, SpecFactory):
        target = target.target
    return SpecFactory(target, owner, task_kinds)


def factory_problem(factory: Any) -> str | None:
    """What is wrong with a declared factory, checked when the plugin loads, or ``None``.

    A callable is fine. A string must read ``"package.module:Attribute"`` and its module must be findable; the
    module is not imported (its attribute is looked up on first use), and a module inside a package that is not
    imported yet is not looked for either, since finding it would import that package.
    """
    target = factory.target if isinstance(factory, SpecFactory) else factory
    if not isinstance(target, str):
        return None if callable(target) else "must be callable or a 'package.module:Attribute' string"
    match = _REFERENCE_RE.match(target)
    if match is None:
        return "must be callable or a 'package.module:Attribute' string (a module path, a colon, an attribute)"
    module_name = match.group(1)
    parts = module_name.split(".")
    for depth in range(1, len(parts) + 1):
        prefix = ".".join(parts[:depth])
        if prefix in sys.modules:
            continue
        try:
            # The parent package is imported (or there is none), so looking costs no import.
            found = importlib.util.find_spec(prefix) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            return f"names the module {module_name!r}, which is not installed ({prefix!r} is not found)"
        break  # deeper modules would need this one imported to be found
    return None
