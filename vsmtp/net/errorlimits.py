"""Postfix's soft and hard error limits for one session: past `limits.soft_errors` errors
each error reply is delayed (a second more each time), at `limits.hard_errors` the session
is closed with 421. A message delivered starts the count again (as Postfix: the limits are
for clients that make errors without delivering mail)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from ..config import LimitsConfig
from ..smtp import replies
from ..smtp.replies import Reply


class ErrorLimits:
    def __init__(self, limits: LimitsConfig) -> None:
        self.limits = limits
        self.errors = 0

    async def count(self, reply: Reply, flush: Callable[[], Awaitable[None]]) -> Reply:
        """The reply to send for `reply`: itself, delayed, or 421 past the hard limit."""
        if reply.code < 400 or reply.code == 421:
            return reply
        self.errors += 1
        limits = self.limits
        if self.errors >= limits.hard_errors:
            return replies.TOO_MANY_ERRORS
        if self.errors > limits.soft_errors:
            await flush()  # what came before goes out first; then the delay
            await trio.sleep(limits.error_delay * (self.errors - limits.soft_errors))
        return reply

    def delivered(self) -> None:
        self.errors = 0
