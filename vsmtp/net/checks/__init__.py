"""vsmtp's own checks at the SMTP stages, beside the rules and the plugins: each a module
here with a Check (base.py) and one line in CHECKS. The stage runner (net/stages.py) calls
them; the session only asks for a stage's verdict.

    recipients   the recipient is ours, or the client may relay (rcpt)
"""

from __future__ import annotations

from collections.abc import Callable

from ...config import Config
from . import recipients
from .base import Check

# In the order they run. Each builds its check from a configuration, or None when it is off.
CHECKS: tuple[Callable[[Config], Check | None], ...] = (recipients.build,)


def build(config: Config) -> tuple[Check, ...]:
    """The checks this configuration turns on."""
    return tuple(check for make in CHECKS if (check := make(config)) is not None)


__all__ = ["CHECKS", "Check", "build"]
