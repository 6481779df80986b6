"""Errors of the sans-IO layer, named for who is to blame (as h11 does).

    ProtocolError
    └── LocalProtocolError    we misused the API (e.g. next_event while a reply is owed)

A peer's mistakes are not exceptions: they arrive as `Invalid` events carrying the reply to
send, because SMTP answers a bad command and carries on.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base of every exception the sans-IO layer raises."""


class LocalProtocolError(ProtocolError):
    """Our own code used the connection wrongly; a bug in vsmtp, never the peer's fault."""
