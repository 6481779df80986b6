"""vsmtp's own checks at the SMTP stages, beside the rules and the plugins: each a module
here with a Check (base.py) and one line in CHECKS. The stage runner (net/stages.py) calls
them; the session only asks for a stage's verdict.

    screen       DNSBL and DNSWL scores before the greeting, on screened listeners (connect)
    recipients   the recipient is ours, or the client may relay (rcpt)
    rates        messages and recipients per interval from one address (mail, rcpt; net/anvil.py)
    greylist     the first attempt of a (network, sender, recipient) is told to retry (rcpt)
    spf          SPF of the MAIL FROM (or HELO) identity (mail)
    dkim         every DKIM signature and the ARC chain verified (data)
    dmarc        the From domain's DMARC policy over the SPF and DKIM results (data)
    authres      the results told in Authentication-Results and Received-SPF (data)
"""

from __future__ import annotations

from collections.abc import Callable

from ...config import Config
from .. import dns as net_dns
from ..anvil import Anvil
from . import authres, dkim, dmarc, greylist, rates, recipients, screen, spf
from .base import Check, Shared, trusted

# In the order they run at a stage (DMARC reads SPF's and DKIM's results; the headers tell
# them all). Each builds its check from a configuration and what the checks share, or None when off.
CHECKS: tuple[Callable[[Config, Shared], Check | None], ...] = (
    screen.build,
    recipients.build,
    rates.build,
    greylist.build,
    spf.build,
    dkim.build,
    dmarc.build,
    authres.build,
)


def build(config: Config, anvil: Anvil) -> tuple[Check, ...]:
    """The checks this configuration turns on, sharing one resolver and its cache, and the anvil."""
    shared = Shared(dns=net_dns.AnswerCache(net_dns.resolver(config.dns)), anvil=anvil)
    return tuple(check for make in CHECKS if (check := make(config, shared)) is not None)


__all__ = ["CHECKS", "Check", "Shared", "build", "trusted"]
