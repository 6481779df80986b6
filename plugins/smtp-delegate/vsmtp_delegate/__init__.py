"""smtp-delegate: hand every message to an external SMTP content filter (a virus scanner,
amavis, a DLP gateway) and take it back on a dedicated listener, as Postfix's
content_filter does.

    plugins = ["smtp-delegate"]

    [plugin.smtp-delegate]
    filter = "127.0.0.1:10025"          # where the filter listens (host:port, [IPv6]:port)
    return_listener = "filter-return"   # the listener the filter sends messages back to

    [[listeners]]                       # the return listener: loopback only
    name = "filter-return"
    addresses = ["127.0.0.1:10026"]

At the delivery stage, each recipient of a message that did not come in on the return
listener is routed to the filter (ctx.set_route): vsmtp delivers it there like any SMTP
delivery, with its retries, deferrals and bounces, and journals it (delivery.succeeded,
transport smtp, to the filter's address). The filter sends the message, changed or not, to
the return listener, where it is queued as a new message and delivered normally: messages
from the return listener are never delegated again, so there is no loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import vsmtp

_settings: dict[str, str] = {}


@vsmtp.hookimpl
def vsmtp_configure(section: Mapping[str, Any]) -> None:
    unknown = set(section) - {"filter", "return_listener"}
    if unknown:
        raise ValueError(f"unknown key {sorted(unknown)[0]!r} (known: filter, return_listener)")
    target, back = section.get("filter"), section.get("return_listener")
    if not isinstance(target, str) or ":" not in target:
        raise ValueError("filter: expected the content filter's address, host:port")
    if not isinstance(back, str) or not back:
        raise ValueError("return_listener: expected the name of the listener the filter sends messages back to")
    host, _, port = target.rpartition(":")
    host = host.strip("[]")
    if not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise ValueError(f"filter: {target!r} is not host:port")
    _settings.clear()
    _settings.update(route=f"smtp:[{host}]:{port}", return_listener=back)


@vsmtp.hookimpl
def vsmtp_delivery(ctx: Any, recipient: str) -> None:
    if not _settings or ctx.listener == _settings["return_listener"]:
        return  # back from the filter (or not configured): delivered as vsmtp chose
    ctx.set_route(recipient, _settings["route"])
