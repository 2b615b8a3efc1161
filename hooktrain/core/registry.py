"""Open name registries (reporters, save policies) filled through ``register_*`` hooks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hooktrain.core.errors import NameConflictError, UnknownNameError, closest_match

Factory = Callable[..., Any]


class Registry:
    """Names to factories, each remembered with the plugin (and distribution) that registered it."""

    def __init__(self, kind: str, field: str):
        self.kind = kind  # "reporter", "save policy"
        self.field = field  # the TrainingArguments field that selects from it
        self._entries: dict[str, tuple[Factory, str]] = {}

    def registrar(self, provider: str) -> Callable[[str, Factory], None]:
        """The ``register(name, factory)`` function handed to one plugin's hook."""

        def register(name: str, factory: Factory) -> None:
            if not isinstance(name, str) or not name:
                raise TypeError(f"{provider}: a {self.kind} name must be a non-empty string, got {name!r}")
            if not callable(factory):
                raise TypeError(f"{provider}: the factory of {self.kind} {name!r} is not callable")
            if name in self._entries and self._entries[name][1] != provider:
                raise NameConflictError(
                    f"the {self.kind} name {name!r} is registered twice: by {self._entries[name][1]} "
                    f"and by {provider}; uninstall or disable one of them"
                )
            self._entries[name] = (factory, provider)

        return register

    def names(self) -> list[str]:
        return sorted(self._entries)

    def factory(self, name: str) -> Factory:
        return self._entries[name][0]

    def provider(self, name: str) -> str:
        return self._entries[name][1]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def unknown_message(self, name: str) -> str:
        close = closest_match(name, self._entries)
        hint = f" Did you mean {close!r}?" if close else ""
        return (
            f"{self.field}: unknown {self.kind} {name!r}.{hint} "
            f"Installed: {', '.join(self.names()) or '(none)'}."
        )

    def check(self, name: str) -> None:
        if name not in self._entries:
            raise UnknownNameError(self.unknown_message(name))

    def create(self, name: str, *args: Any, **kwargs: Any) -> Any:
        self.check(name)
        return self._entries[name][0](*args, **kwargs)
