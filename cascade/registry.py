"""One small registry per kind of component (LIIF's ``models/models.py`` pattern).

>>> MODELS = Registry("model")
>>> @MODELS.register("mlp")
... class MLP: ...
>>> MODELS.make({"name": "mlp", "args": {}})  # doctest: +SKIP
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from cascade.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to constructors; duplicate names fail, unknown names suggest the nearest."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._entries:
                raise KeyError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            near = difflib.get_close_matches(name, list(self._entries), n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ConfigError(
                f"unknown {self.kind} {name!r}{hint}; known: {', '.join(sorted(self._entries))}"
            ) from None

    def make(self, spec: str | Mapping[str, Any], **extra: Any) -> Any:
        """Build from ``"name"`` or ``{"name": ..., "args": {...}}``; ``extra`` adds keyword args."""
        if isinstance(spec, str):
            name, args = spec, {}
        else:
            name, args = spec["name"], dict(spec.get("args") or {})
        return self.get(name)(**args, **extra)  # type: ignore[operator]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


# The registries shared across packages (each kind's own module registers into them).
MODELS: Registry = Registry("model")
TASKS: Registry = Registry("training stage")
