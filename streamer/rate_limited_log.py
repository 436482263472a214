"""Warnings by reason that a flood of bad input cannot turn into a flood of log lines."""

from __future__ import annotations

import logging
import time
from collections import Counter


class RateLimitedLog:
    """Log each reason once, then a summary at most every `every_s` seconds: the next message
    of that reason, or else `flush` (the receiver calls it when a summary is due, and at the
    end of a series), so a burst is never left unsaid."""

    def __init__(self, logger: logging.Logger, prefix: str, every_s: float):
        self.log = logger
        self.prefix = prefix
        self.every_s = every_s
        self._last: dict[str, float] = {}
        self._since: Counter[str] = Counter()

    def __call__(self, reason: str, message: str) -> None:
        now = time.monotonic()
        last = self._last.get(reason)
        if last is None or now - last >= self.every_s:
            extra = self._since.pop(reason, 0)
            more = f" (and {extra} more since)" if extra else ""
            self.log.warning("%s: %s: %s%s", self.prefix, reason, message, more)
            self._last[reason] = now
        else:
            self._since[reason] += 1

    def due(self) -> float | None:
        """When the earliest unsaid count is due (time.monotonic), or None."""
        return min((self._last[r] + self.every_s for r in self._since), default=None)

    def flush(self, now: float, every: bool = False) -> None:
        """Say the counts that are due (or `every` one) since each reason was last logged."""
        for reason in [r for r in self._since if every or now - self._last[r] >= self.every_s]:
            self.log.warning("%s: %s: %d more since", self.prefix, reason, self._since.pop(reason))
            self._last[reason] = now
