"""One generic registry, shared by encoders, methods, view policies, probes and data sources.

Modelled on timm's: a ``register`` decorator, ``create(name, **kwargs)`` and ``names(pattern)``.
Keyword arguments are checked against the factory's signature so that a typo in a config
fails with a suggestion instead of passing silently.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from selfsup.errors import SelfsupError

T = TypeVar("T")


class UnknownNameError(SelfsupError, KeyError):
    """Raised for a name that is not registered; the message lists close matches."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


def suggest(name: str, candidates: Iterable[str]) -> str:
    """Return ' Did you mean X?' for the closest candidate, or '' when none is close."""
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""


class Registry(Generic[T]):
    """A named collection of factories (classes or functions) that build ``T``."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}
        self._summaries: dict[str, str] = {}
        self._metadata: dict[str, dict[str, Any]] = {}

    def register(
        self, name: str | None = None, **metadata: Any
    ) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: ``@REGISTRY.register("name", modality="image")`` (name defaults to the factory's
        ``__name__``); ``metadata`` is what callers may ask about a factory without calling it."""

        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            key = name or factory.__name__
            if key in self._factories:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._factories[key] = factory
            self._metadata[key] = dict(metadata)
            doc = inspect.getdoc(factory) or ""
            self._summaries[key] = doc.splitlines()[0] if doc else ""
            return factory

        return decorator

    def get(self, name: str) -> Callable[..., T]:
        try:
            return self._factories[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}.{suggest(name, self._factories)} "
                f"Registered: {', '.join(sorted(self._factories))}."
            ) from None

    def parameters(self, name: str) -> dict[str, inspect.Parameter]:
        """The keyword arguments a factory accepts (positional-only ones excluded)."""
        signature = inspect.signature(self.get(name))
        return {
            key: p
            for key, p in signature.parameters.items()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        }

    def check_kwargs(self, name: str, kwargs: dict[str, Any], *, provided: Iterable[str] = ()) -> None:
        """Reject keys the factory does not take, with a 'did you mean' suggestion.

        ``provided`` names arguments the caller supplies itself (e.g. ``encoder``), which a
        user may not set.
        """
        accepted = set(self.parameters(name)) - set(provided)
        for key in kwargs:
            if key not in accepted:
                raise TypeError(
                    f"{self.kind} {name!r} has no option {key!r}.{suggest(key, accepted)} "
                    f"Options: {', '.join(sorted(accepted)) or '(none)'}."
                )

    def create(self, name: str, /, **kwargs: Any) -> T:
        self.check_kwargs(name, kwargs)
        return self.get(name)(**kwargs)

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._factories if fnmatch.fnmatch(n, pattern))

    def metadata(self, name: str) -> dict[str, Any]:
        """What was registered with the factory (e.g. ``{"modality": "image"}``)."""
        self.get(name)
        return self._metadata[name]

    def names_where(self, **metadata: Any) -> list[str]:
        """Sorted names whose metadata has all the given values, e.g. ``names_where(modality="vector")``."""
        return sorted(n for n, m in self._metadata.items() if all(m.get(k) == v for k, v in metadata.items()))

    def summary(self, name: str) -> str:
        self.get(name)
        return self._summaries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._factories

    def __len__(self) -> int:
        return len(self._factories)
