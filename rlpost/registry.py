"""Name -> function registries, so a config string selects an implementation and a typo names its neighbours. An
entry can carry facts about itself (what an estimator needs, how a loss must be aggregated), so code that has to
know them asks the registry instead of comparing names."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

F = TypeVar("F", bound=Callable)


def did_you_mean(word: str, options: Iterable[str]) -> str:
    """A ' (did you mean 'x'?)' suffix for error messages, or '' when nothing is close."""
    match = difflib.get_close_matches(str(word), list(options), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


class Registry(Generic[F]):
    """`facts` is the dataclass an entry's keyword facts build (its defaults hold for entries that give none)."""

    def __init__(self, kind: str, facts: type | None = None):
        self.kind, self._facts_type = kind, facts
        self._items: dict[str, F] = {}
        self._facts: dict[str, Any] = {}

    def register(self, *names: str, **facts) -> Callable[[F], F]:
        if facts and self._facts_type is None:
            raise TypeError(f"{self.kind} entries carry no facts, got {sorted(facts)}")

        def add(fn: F) -> F:
            for name in names:
                if name in self._items:
                    raise ValueError(f"{self.kind} '{name}' is registered twice")
                self._items[name] = fn
                if self._facts_type is not None:
                    self._facts[name] = self._facts_type(**facts)
            return fn

        return add

    def get(self, name: str) -> F:
        self._check(name)
        return self._items[name]

    def facts(self, name: str) -> Any:
        self._check(name)
        return self._facts[name]

    def _check(self, name: str) -> None:
        if name not in self._items:
            raise KeyError(f"unknown {self.kind} '{name}'{did_you_mean(name, self._items)}; "
                           f"known: {', '.join(sorted(self._items))}")

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items
