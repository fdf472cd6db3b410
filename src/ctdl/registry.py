"""One generic name -> factory registry, used for models, losses, metrics, optimizers, schedulers.

Registries are filled by explicit imports (never by scanning folders); ``create`` drops
``None`` keyword arguments so unset config fields never override a factory's defaults.
"""

from __future__ import annotations

import fnmatch
from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of factories with metadata."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Callable[..., T]] = {}
        self._meta: dict[str, dict[str, Any]] = {}

    def register(self, name: str, **meta: Any) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: ``@REG.register("name", task="segmentation")``."""

        def deco(fn: Callable[..., T]) -> Callable[..., T]:
            if name in self._items:
                raise KeyError(f"{self.kind} '{name}' is registered twice")
            self._items[name] = fn
            doc = (fn.__doc__ or "").strip().splitlines()
            self._meta[name] = {"description": doc[0] if doc else "", **meta}
            return fn

        return deco

    def add(self, name: str, fn: Callable[..., T], **meta: Any) -> None:
        self.register(name, **meta)(fn)

    def get(self, name: str) -> Callable[..., T]:
        if name not in self._items:
            raise KeyError(
                f"unknown {self.kind} '{name}'; valid names: {', '.join(sorted(self._items))}"
            )
        return self._items[name]

    def create(self, name: str, **kwargs: Any) -> T:
        fn = self.get(name)
        return fn(**{k: v for k, v in kwargs.items() if v is not None})

    def meta(self, name: str) -> dict[str, Any]:
        self.get(name)
        return dict(self._meta[name])

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._items if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __len__(self) -> int:
        return len(self._items)
