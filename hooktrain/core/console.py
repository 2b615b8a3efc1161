"""hooktrain's messages on the console."""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger("hooktrain")


def log_level_of(args: Any, process_index: int, local_process_index: int) -> tuple[str, bool]:
    """``(level, main)`` of this process: ``log_level`` where it logs as the main process (the
    first process of the run, or of each machine with ``log_on_each_node``), else
    ``log_level_replica``."""
    main = process_index == 0 or (args.log_on_each_node and local_process_index == 0)
    return (args.log_level if main else args.log_level_replica), main


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
