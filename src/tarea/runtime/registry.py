"""The functions an image offers, by name, and the ``@task`` decorator."""

from __future__ import annotations

import functools
import inspect
import sys
import typing
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, overload

from .params import bind

F = TypeVar("F", bound=Callable[..., Any])


class Task:
    """One callable function: its name, the function, and how to bind its parameters."""

    def __init__(self, name: str, function: Callable[..., Any]) -> None:
        self.name = name
        self.function = function
        self.signature = inspect.signature(function)

    @functools.cached_property
    def hints(self) -> dict[str, Any]:
        """The function's resolved type hints (resolved late, so forward references work)."""
        try:
            return typing.get_type_hints(self.function)
        except Exception as exc:  # an unresolvable annotation: do not check it
            print(
                f"tarea.runtime: cannot resolve the type hints of {self.name!r} ({exc}); "
                "its parameters are not type-checked",
                file=sys.stderr,
            )
            return {}

    def bind(self, params: Mapping[str, Any]) -> tuple[list[Any], dict[str, Any]]:
        """Check ``params`` against the signature; raise ``ParamError`` when they do not fit."""
        return bind(self.signature, self.hints, params)

    def call(self, params: Mapping[str, Any]) -> Any:
        """Validate ``params`` and call the function with them."""
        args, kwargs = self.bind(params)
        return self.function(*args, **kwargs)


class Registry:
    """A set of tasks by name. ``tarea.runtime.task`` adds to the default one."""

    def __init__(self) -> None:
        self._tasks: dict[str, Task] = {}

    @overload
    def task(self, function: F, /) -> F: ...

    @overload
    def task(self, function: None = None, /, *, name: str | None = None) -> Callable[[F], F]: ...

    def task(
        self, function: F | None = None, /, *, name: str | None = None
    ) -> F | Callable[[F], F]:
        """Register a function: ``@registry.task`` or ``@registry.task(name="other")``."""
        if function is not None:
            self.add(function)
            return function

        def decorator(fn: F) -> F:
            self.add(fn, name=name)
            return fn

        return decorator

    def add(self, function: Callable[..., Any], *, name: str | None = None) -> Task:
        """Register ``function`` under ``name`` (default: its ``__name__``)."""
        task_name = name if name is not None else getattr(function, "__name__", "")
        if not isinstance(task_name, str) or not task_name:
            raise ValueError(f"a task needs a non-empty name, got {task_name!r}")
        if task_name.startswith("rpc."):
            raise ValueError(f"task names starting with 'rpc.' are reserved: {task_name!r}")
        if task_name in self._tasks:
            raise ValueError(f"a task named {task_name!r} is already registered")
        task = Task(task_name, function)
        self._tasks[task_name] = task
        return task

    def get(self, name: str) -> Task | None:
        """The task called ``name``, or ``None``."""
        return self._tasks.get(name)

    def names(self) -> list[str]:
        """The task names, sorted."""
        return sorted(self._tasks)

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def __len__(self) -> int:
        return len(self._tasks)


default_registry = Registry()
"""The registry that ``tarea.runtime.task`` fills and ``serve()`` serves by default."""


@overload
def task(function: F, /) -> F: ...


@overload
def task(function: None = None, /, *, name: str | None = None) -> Callable[[F], F]: ...


def task(function: F | None = None, /, *, name: str | None = None) -> F | Callable[[F], F]:
    """Offer a function as a task: ``@task`` or ``@task(name="other")``.

    The function stays a plain function (callable directly, e.g. in tests).
    Parameters arrive by name and are checked against its type hints.
    """
    if function is not None:
        return default_registry.task(function)
    return default_registry.task(name=name)
