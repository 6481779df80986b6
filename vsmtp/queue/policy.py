"""Pure decisions: where a recipient goes and when a failed attempt is tried again.

Nothing here reads the clock or touches I/O: time comes in as `now=`, configuration as
arguments, and the answers are values the delivery layer acts on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..config import Config

# A local part we are willing to turn into a mailbox directory name: letters and digits (any
# script, for SMTPUTF8 users) and . _ + = -, no leading dot, no '/': nothing a shell or a
# path could misread. Anything else is refused at RCPT time.
_SAFE_USER = re.compile(r"\w[\w.+=-]{0,63}\Z")

RETRY_FIRST = 300.0  # seconds: 5 minutes, as Postfix's minimal_backoff_time
RETRY_MAX = 3600.0  # seconds: the cap on the doubling, as Postfix's maximal_backoff_time


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalRoute:
    """Deliver to a local Maildir."""

    user: str
    domain: str


def is_local_domain(domain: str, config: Config) -> bool:
    return domain.lower() in {d.lower() for d in config.local.domains}


def local_user(address: str) -> tuple[str, str]:
    """('bob', 'localhost') for 'Bob@LocalHost'; 'postmaster' alone is ('postmaster', '')."""
    local, at, domain = address.rpartition("@")
    if not at:
        return (address.lower(), "")
    return (local.lower(), domain.lower())


def local_recipient_ok(user: str, config: Config) -> bool:
    """Does this (lower-cased) user exist in our local domains? postmaster always does."""
    if user == "postmaster":
        return True
    if not _SAFE_USER.match(user):
        return False
    return config.local.catch_all or user in {u.lower() for u in config.local.users}


def route(address: str, config: Config) -> LocalRoute | None:
    """The route of an accepted recipient; None if it is not local (no remote delivery yet)."""
    user, domain = local_user(address)
    if domain and not is_local_domain(domain, config):
        return None
    return LocalRoute(user=user, domain=domain or config.local.domains[0].lower())


def retry_at(attempts: int, *, now: float) -> float:
    """When to try again after `attempts` failed attempts: 5 min doubling, capped at 1 h."""
    delay = min(RETRY_FIRST * float(2 ** max(attempts - 1, 0)), RETRY_MAX)
    return now + delay
