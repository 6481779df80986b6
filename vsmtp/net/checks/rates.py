"""Messages and recipients per interval from one client address, counted across every
receiving process (net/anvil.py, Postfix's smtpd_client_message_rate_limit and
smtpd_client_recipient_rate_limit): past the limit, MAIL or RCPT gets 450 4.7.1, try later.
Clients in relay.networks are not limited."""

from __future__ import annotations

from ...config import Config
from ...queue import policy
from ...rules.context import Context
from ...rules.verdicts import Verdict
from ...smtp import replies
from ..anvil import Anvil
from .base import Check, Shared


class RateCheck(Check):
    name = "vsmtp:anvil"
    stages = frozenset({"mail", "rcpt"})

    def __init__(self, config: Config, anvil: Anvil) -> None:
        self.config = config.anvil
        self.anvil = anvil
        self.networks = policy.relay_networks(config)

    async def decide(self, stage: str, ctx: Context) -> Verdict | None:
        if policy.may_relay(ctx.client.address, self.networks):
            return None
        host = str(ctx.client.address)
        if stage == "mail" and not self.anvil.take(f"mail:{host}", self.config.message_rate, self.config.interval):
            return Verdict("reject", replies.MESSAGE_RATE)
        if stage == "rcpt" and not self.anvil.take(f"rcpt:{host}", self.config.recipient_rate, self.config.interval):
            return Verdict("reject", replies.RECIPIENT_RATE)
        return None


def build(config: Config, shared: Shared) -> Check | None:
    if not (config.anvil.message_rate or config.anvil.recipient_rate):
        return None
    return RateCheck(config, shared.anvil)
