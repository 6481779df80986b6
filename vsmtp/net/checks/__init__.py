"""vsmtp's own checks at the SMTP stages, beside the rules and the plugins: each a module
here with a Check (base.py) and one line in CHECKS. The stage runner (net/stages.py) calls
them; the session only asks for a stage's verdict.

    recipients   the recipient is ours, or the client may relay (rcpt)
    spf          SPF of the MAIL FROM (or HELO) identity (mail)
    dkim         every DKIM signature and the ARC chain verified (data)
    dmarc        the From domain's DMARC policy over the SPF and DKIM results (data)
    authres      the results told in Authentication-Results and Received-SPF (data)
"""

from __future__ import annotations

from collections.abc import Callable

from ...config import Config
from .. import dns as net_dns
from . import authres, dkim, dmarc, recipients, spf
from .base import Check

# In the order they run at a stage (DMARC reads SPF's and DKIM's results; the headers tell
# them all). Each builds its check from a configuration and the DNS cache, or None when off.
CHECKS: tuple[Callable[[Config, net_dns.AnswerCache], Check | None], ...] = (
    recipients.build,
    spf.build,
    dkim.build,
    dmarc.build,
    authres.build,
)


def build(config: Config) -> tuple[Check, ...]:
    """The checks this configuration turns on, sharing one resolver and its cache."""
    cache = net_dns.AnswerCache(net_dns.resolver(config.dns))
    return tuple(check for make in CHECKS if (check := make(config, cache)) is not None)


__all__ = ["CHECKS", "Check", "build"]
