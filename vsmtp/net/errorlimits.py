"""Postfix's soft and hard error limits for one session: past `limits.soft_errors` errors
each error reply is delayed (a second more each time), at `limits.hard_errors` the session
is closed with 421. Past `limits.junk_commands` commands that move no mail forward (NOOP,
RSET, VRFY, EXPN, HELP), each further one counts as an error too (Postfix's
smtpd_junk_command_limit): a client cannot hold its slot with them until the session's end.
A message delivered starts both counts again (as Postfix: the limits are for clients that
make errors, or idle talk, without delivering mail)."""

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
        self.junk = 0

    async def count(self, reply: Reply, flush: Callable[[], Awaitable[None]], *, junk: bool = False) -> Reply:
        """The reply to send for `reply` (to a junk command, if `junk`): itself, delayed, or
        421 past the hard limit."""
        limits = self.limits
        error = reply.code >= 400 and reply.code != 421
        if junk and limits.junk_commands:
            self.junk += 1
            error = error or self.junk > limits.junk_commands
        if not error:
            return reply
        self.errors += 1
        if self.errors >= limits.hard_errors:
            return replies.TOO_MANY_ERRORS
        if self.errors > limits.soft_errors:
            await flush()  # what came before goes out first; then the delay
            await trio.sleep(limits.error_delay * (self.errors - limits.soft_errors))
        return reply

    def delivered(self) -> None:
        self.errors = self.junk = 0
