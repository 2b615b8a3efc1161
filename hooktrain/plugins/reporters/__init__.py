"""Built-in reporters: one module per tracker, each imported only when selected."""

from __future__ import annotations

import importlib.util

from hooktrain.core.errors import PluginLoadError


def installed(module: str) -> bool:
    """Whether *module* can be imported, found without importing it (``report_to="all"`` asks)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_library(name: str, package: str, extra: str, error: ImportError) -> PluginLoadError:
    """The error of a reporter whose tracker library cannot be imported, naming the extra to install."""
    return PluginLoadError(
        f'report_to="{name}" needs the {package} package ({error}): pip install "hooktrain[{extra}]"'
    )
