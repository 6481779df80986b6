"""vsmtp: an event-sourced mail transfer agent.

This module is the plugin-facing API, and the only one a plugin needs to import: the
`hookimpl` marker, the Context a stage hook receives (with its Message), the verdicts it
returns, and `events`, the journal events an observer sees; FileMap and FileSet, the file-backed
tables rules use, for plugins that keep tables of their own.

    import vsmtp

    @vsmtp.hookimpl
    def vsmtp_rcpt(ctx: vsmtp.Context, recipient: str) -> vsmtp.Verdict | None:
        if recipient.startswith("spam@"):
            return vsmtp.reject("550 5.1.1 no such user")
        return None

    @vsmtp.hookimpl
    def vsmtp_event(event, position):
        if isinstance(event, vsmtp.events.DeliverySucceeded):
            ...
"""

from __future__ import annotations

import pluggy

from . import _dnspython  # noqa: F401  # first: before anything imports dns.query
from .mail.message import Message
from .queue import events
from .rules.context import Context
from .rules.objects import FileMap, FileSet
from .rules.verdicts import NEXT, Verdict, accept, deny, faccept, quarantine, reject

hookimpl = pluggy.HookimplMarker("vsmtp")

__all__ = [
    "NEXT",
    "Context",
    "FileMap",
    "FileSet",
    "Message",
    "Verdict",
    "accept",
    "deny",
    "events",
    "faccept",
    "hookimpl",
    "quarantine",
    "reject",
]
