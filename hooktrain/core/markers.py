"""The pluggy markers of the ``hooktrain`` project."""

from __future__ import annotations

import pluggy

PROJECT = "hooktrain"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)
