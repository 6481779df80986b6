"""Every hook vsmtp calls, fully documented. Nothing else lives here.

Implementations take only the arguments they use (pluggy passes them by name), so new
arguments can be added without breaking anyone. Any implementation may be a coroutine
function: vsmtp awaits what it returns.
"""

from __future__ import annotations

from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("vsmtp")


@hookspec
def vsmtp_event(event: Any, position: int) -> None:
    """Observe one committed journal event.

    Called once for every record committed to the journal after the server started, in
    journal order, after the commit (so the event is durable). Observers cannot change
    anything; what they return is ignored.

    :param event: the journal event, a frozen dataclass from vsmtp.queue.events (for example
        MessageAccepted, DeliverySucceeded), or vsmtp.queue.events.UnknownEvent for a tag this
        version does not know. `event.TAG` is its stable name.
    :param position: the event's position in the journal (unique, increasing).

    May be async. An exception is logged with the plugin's name and does not stop the server
    or other observers.
    """
