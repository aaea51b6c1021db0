"""What every `qabot` command shares: the --debug state, the consoles, settings and logging set-up."""

from __future__ import annotations

import logging

from rich.console import Console

from qabot.settings import Settings

console = Console()
err = Console(stderr=True, soft_wrap=True)


class State:
    debug = False


def settings(engine: bool = True) -> Settings:
    """Build the settings and logging; `engine=False` keeps torch out of this process (the train worker's parent)."""
    settings = Settings()
    level = logging.DEBUG if State.debug else getattr(logging, settings.log_level)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if engine and not State.debug:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    return settings
