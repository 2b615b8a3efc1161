"""The Trainer's list of callbacks: objects a plugin runs (the hf_callbacks plugin runs Hugging
Face ``TrainerCallback``s). The loop itself never calls them.

``add_callback`` / ``pop_callback`` / ``remove_callback`` behave as Hugging Face's: a class is
instantiated, a class matches its instances, and adding a second callback of one class warns.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

logger = logging.getLogger("hooktrain")


class CallbackMethods:
    """Mixed into :class:`~hooktrain.Trainer`: ``callbacks`` and the methods that change it."""

    #: The callbacks, in calling order.
    callbacks: list[Any]

    def _set_callbacks(self, callbacks: Iterable[Any] | None) -> None:
        self.callbacks = []
        for callback in callbacks or ():
            self.add_callback(callback)

    def add_callback(self, callback: Any) -> None:
        """Append *callback* (an instance, or a class to instantiate) to :attr:`callbacks`."""
        instance = callback() if isinstance(callback, type) else callback
        if any(type(c) is type(instance) for c in self.callbacks):
            logger.warning(
                "adding a second %s to the callbacks (%s)", type(instance).__name__,
                ", ".join(type(c).__name__ for c in self.callbacks))
        self.callbacks.append(instance)

    def pop_callback(self, callback: Any) -> Any:
        """Remove and return the first callback that is *callback*, or an instance of it when it is
        a class; ``None`` when there is none."""
        for c in self.callbacks:
            if isinstance(c, callback) if isinstance(callback, type) else c is callback:
                self.callbacks.remove(c)
                return c
        return None

    def remove_callback(self, callback: Any) -> None:
        """Remove the first callback that is *callback*, or an instance of it when it is a class.

        A class with no instance in the list is ignored; an instance not in it is a ``ValueError``
        (as in Hugging Face's ``Trainer``).
        """
        if self.pop_callback(callback) is None and not isinstance(callback, type):
            raise ValueError(
                f"{callback!r} is not one of the callbacks "
                f"({', '.join(type(c).__name__ for c in self.callbacks) or 'none'})")
