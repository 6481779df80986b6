"""Is a recipient ours, or may this client relay to it? (Postfix's reject_unauth_destination
and the local recipient table.) An authenticated client may relay, as one in relay.networks
(permit_sasl_authenticated)."""

from __future__ import annotations

from ...config import Config
from ...queue import policy
from ...rules.context import Context
from ...rules.verdicts import Verdict
from ...smtp import replies
from .base import Check

_REFUSALS = {"relay denied": replies.RELAY_DENIED, "unknown user": replies.NO_SUCH_USER}


class RecipientCheck(Check):
    name = "vsmtp:recipients"
    stages = frozenset({"rcpt"})

    def __init__(self, config: Config) -> None:
        self.config = config
        self.networks = policy.relay_networks(config)

    async def decide(self, stage: str, ctx: Context) -> Verdict | None:
        relay_allowed = bool(ctx.auth) or policy.may_relay(ctx.client.address, self.networks)
        refusal = _REFUSALS.get(policy.recipient_verdict(ctx.recipient, self.config, relay_allowed=relay_allowed))
        return Verdict("reject", refusal) if refusal is not None else None


def build(config: Config, shared: object) -> Check:
    return RecipientCheck(config)
