"""The results told in the message, at the data stage after every other check: one
Authentication-Results header (RFC 8601) with authserv-id `hostname`, and Received-SPF when
SPF ran. Authentication-Results fields already in the message that claim our authserv-id
are removed (RFC 8601 5: a forgery, or our own from an earlier pass); others are kept."""

from __future__ import annotations

from ...auth import results
from ...config import Config
from ...rules.context import Context
from .base import Check


class AuthResultsCheck(Check):
    name = "vsmtp:authentication-results"
    stages = frozenset({"data"})

    def __init__(self, config: Config) -> None:
        self.authserv_id = config.hostname

    async def learn(self, stage: str, ctx: Context) -> None:
        assert ctx.message is not None
        signed = ctx.dkim is not None and bool(ctx.dkim.signatures)
        sealed = ctx.arc is not None and ctx.arc.result != "none"
        if ctx.spf is None and ctx.dmarc is None and not signed and not sealed:
            return  # nothing to tell: a trusted client's unsigned mail (SPF and DMARC check strangers only)
        header = results.authentication_results(self.authserv_id, spf=ctx.spf, dkim=ctx.dkim, dmarc=ctx.dmarc, arc=ctx.arc)
        if ctx.spf is not None:
            header += results.received_spf(ctx.spf, receiver=self.authserv_id)
        ctx.message = ctx.message.with_head(header + results.without_ours(ctx.message.head, self.authserv_id))


def build(config: Config, shared: object) -> Check | None:
    any_on = config.spf.mode != "off" or config.dmarc.mode != "off" or config.dkim.verify or config.arc.verify
    return AuthResultsCheck(config) if any_on else None
