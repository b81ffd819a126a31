"""Name → factory registries, one per extension point (datasets, augmentations, models, losses).

Adding a component is one function plus one ``@REGISTRY.register("name")`` decorator in the
module of its area; each area's ``__init__`` imports all of its modules, so a registry is complete
as soon as its package is imported. Unknown names raise :class:`~kd_ray.errors.ConfigError`
listing the known ones, which is what the CLI shows the user.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from kd_ray.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A queryable mapping from names to components of one kind."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers ``item`` under ``name``; a name can be registered once."""

        def decorate(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = item
            return item

        return decorate

    def get(self, name: str) -> T:
        """The component called ``name``; unknown names list the known ones."""
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "(none)"
            raise ConfigError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names matching a shell-style ``pattern``, sorted."""
        from fnmatch import fnmatch

        return sorted(n for n in self._items if fnmatch(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
