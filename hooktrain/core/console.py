"""hooktrain's messages on the console."""

from __future__ import annotations

import logging

logger = logging.getLogger("hooktrain")


def console_logging(level: str, main_process: bool) -> None:
    """Show hooktrain's messages on stderr: INFO on the main process, WARNING elsewhere.

    Nothing is added when the application configured logging itself; ``log_level`` (other than
    ``"passive"``) sets the level of the ``hooktrain`` logger explicitly.
    """
    if level != "passive":
        logger.setLevel(level.upper())
    elif logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO if main_process else logging.WARNING)
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[hooktrain] %(levelname)s: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
