"""Settings of the progress bars (:mod:`hooktrain.plugins.progress`); torch-free."""

from __future__ import annotations

from hooktrain.core.settings import arg, config_group


@config_group
class ProgressArguments:
    disable_tqdm: bool = arg(False, "Hide the progress bars.")
