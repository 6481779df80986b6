"""An example vsmtp plugin: adds `X-Example: <greeting>` to every message at the data stage,
and refuses mail from senders its configuration lists.

    plugins = ["example"]

    [plugin.example]
    greeting = "hello from the example plugin"
    refuse = ["spammer@example.net"]
"""

from __future__ import annotations

from typing import Any

import vsmtp
from vsmtp import deny

settings: dict[str, Any] = {"greeting": "hello", "refuse": frozenset()}


@vsmtp.hookimpl
def vsmtp_configure(section: dict[str, Any]) -> None:
    greeting = section.get("greeting", "hello")
    refuse = section.get("refuse", [])
    if not isinstance(greeting, str) or "\n" in greeting:
        raise ValueError("greeting: expected one line of text")
    if not isinstance(refuse, list) or not all(isinstance(a, str) for a in refuse):
        raise ValueError("refuse: expected a list of addresses")
    settings.update(greeting=greeting, refuse=frozenset(a.lower() for a in refuse))


@vsmtp.hookimpl
def vsmtp_mail(ctx: vsmtp.Context) -> vsmtp.Verdict | None:
    if (ctx.sender or "").lower() in settings["refuse"]:
        return deny("550 5.7.1 the example plugin refuses this sender")
    return None


@vsmtp.hookimpl
def vsmtp_data(ctx: vsmtp.Context) -> None:
    ctx.add_header("X-Example", settings["greeting"])
