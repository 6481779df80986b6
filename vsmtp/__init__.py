"""vsmtp: an event-sourced mail transfer agent.

This module is the plugin-facing API: the `hookimpl` marker and the journal event types.

    import vsmtp

    @vsmtp.hookimpl
    def vsmtp_event(event, position):
        ...
"""

from __future__ import annotations

import pluggy

from .queue import events

hookimpl = pluggy.HookimplMarker("vsmtp")

__all__ = ["events", "hookimpl"]
