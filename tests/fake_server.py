"""What both fake platform servers share: waiting until the bot has done something."""

from __future__ import annotations

import asyncio
import time
from typing import Any


class Watched:
    """Set `self._changed` whenever the bot calls the server; `wait_for` re-checks a condition then."""

    calls: list[Any]

    def __init__(self) -> None:
        self._changed = asyncio.Event()

    async def wait_for(self, predicate, timeout: float = 30.0):
        """Wait until predicate() is truthy and return its value; fail with the last calls seen."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() >= deadline:
                raise AssertionError(f"timed out; last calls: {[c[:2] for c in self.calls][-12:]}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(0.5, deadline - time.monotonic()))
            except TimeoutError:
                pass
