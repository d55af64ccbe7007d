"""Name -> factory registries, one per extension axis (models, activations, attacks, ...)."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from dsnn_cli.errors import UsageError

T = TypeVar("T")


class Registry(Generic[T]):
    """A dict of named entries whose unknown-name error lists the valid names."""

    def __init__(self, kind: str, key: str | None = None) -> None:
        self.kind = kind
        self.key = key or kind  # the config key that names an entry (model.activation, loss, ...)
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' registered twice")
            self._entries[name] = entry
            return entry

        return add

    def add(self, name: str, entry: T) -> T:
        return self.register(name)(entry)

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            valid = ", ".join(sorted(self._entries))
            raise UsageError(f"unknown {self.kind} '{name}' (valid: {valid})") from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def names(self) -> list[str]:
        return sorted(self._entries)

    def check_settings(self, name: str, settings: Mapping[str, Any], n_args: int = 0) -> None:
        """Refuse config keys that entry `name` does not take after its first `n_args` arguments.

        Why: a preset that sets, say, ``loss.margin`` leaves that key behind when the command
        line swaps the group for one without it; that must be a one-line error naming the fix.
        """
        parameters = list(inspect.signature(self[name]).parameters.values())[n_args:]
        valid = [p.name for p in parameters if p.kind is not inspect.Parameter.VAR_KEYWORD]
        missing = [
            p.name for p in parameters if p.default is inspect.Parameter.empty and p.name not in settings
        ]
        if missing:
            raise UsageError(
                f"{self.key}={name} needs {', '.join(missing)}: add +{self.key}.{missing[0]}=..."
            )
        unknown = sorted(set(settings) - set(valid))
        if unknown:
            takes = ", ".join(valid) or "none"
            raise UsageError(
                f"{self.key}={name} has no setting {', '.join(unknown)} (valid: {takes}); "
                f"drop a key a preset left behind with ~{self.key}.{unknown[0]}"
            )

    def typed_settings(self, name: str, settings: Mapping[str, Any]) -> dict[str, Any]:
        """`settings` converted to the types entry `name` annotates (int, float, bool, str), or one
        UsageError line naming the key: `loss.margin=abc` is refused here, not deep in a loss."""
        from dsnn_cli.config import convert, describe_range, to_plain

        hints = typing.get_type_hints(self[name])
        typed = {key: to_plain(value) for key, value in settings.items()}
        for key, value in settings.items():
            kind = hints.get(key)
            if kind in (int, float, bool, str) and value is not None:
                converted = convert(value, kind)
                if converted is None:
                    valid = describe_range(kind, None, None, False, None)
                    raise UsageError(f"{self.key}.{key}={value!r} is not valid: it must be {valid}")
                typed[key] = converted
        return typed

    def build(self, name: str, settings: Mapping[str, Any], *args: Any) -> Any:
        """Call entry `name` with `args` and the config `settings`, after check_settings and with
        each setting converted to its annotated type."""
        self.check_settings(name, settings, len(args))
        return self[name](*args, **self.typed_settings(name, settings))
