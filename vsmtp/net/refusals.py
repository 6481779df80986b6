"""Refusals logged in summary: one line when a client is first refused, then at most one a
minute per client, saying how many more were refused meanwhile (a flood of connections
makes a line, not megabytes). Clients not seen for a while are forgotten."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

INTERVAL = 60.0  # seconds between two lines about one client
MAX_CLIENTS = 10_000  # clients remembered; past it the table starts afresh


@dataclass(slots=True)
class _Seen:
    logged_at: float
    unlogged: int = 0


class RefusalLog:
    def __init__(self, log: logging.Logger, *, clock: Callable[[], float]) -> None:
        self.log = log
        self.clock = clock
        self._seen: dict[str, _Seen] = {}

    def refused(self, client: str, listener: str, reason: object) -> None:
        now = self.clock()
        seen = self._seen.get(client)
        if seen is not None and now - seen.logged_at < INTERVAL:
            seen.unlogged += 1
            return
        if len(self._seen) >= MAX_CLIENTS:
            self._seen.clear()
        more = f" ({seen.unlogged} more refused in the last {now - seen.logged_at:.0f}s)" if seen is not None and seen.unlogged else ""
        self.log.warning("refused %s on %s: %s%s", client, listener, reason, more)
        self._seen[client] = _Seen(logged_at=now)
