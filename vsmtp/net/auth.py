"""SMTP AUTH for one session (RFC 4954): the SASL exchange (smtp/sasl.py), the password
check in a worker thread, the auth stage once the password is right, and what is journaled
(session.authenticated, session.auth_failed: never the password). The session hands each
AUTH line here and sends the reply it gets back."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import trio

from ..queue import events as qe
from ..queue import policy
from ..rules.context import Context
from ..rules.verdicts import Holds, Verdict
from ..smtp import replies, sasl
from ..smtp.replies import Reply
from .settings import SessionSettings
from .stages import StageRunner

log = logging.getLogger(__name__)

# Password checks at once, per process: each scrypt takes 16 MiB and tens of milliseconds, so
# a flood of AUTH attempts waits its turn instead of taking the memory or the threads.
_CHECKS = trio.CapacityLimiter(4)


class Login:
    def __init__(
        self,
        settings: SessionSettings,
        *,
        ctx: Context,
        stages: StageRunner,
        holds: Holds,
        journal: Callable[[qe.JournalEvent], Awaitable[object]],
    ) -> None:
        self.passwords = settings.passwords
        self.max_failures = settings.config.auth.max_failures
        self.anvil, self.limits = settings.anvil, settings.config.anvil
        self.exempt = policy.may_relay(ctx.client.address, settings.relay_networks)  # never locked out
        self.ctx = ctx
        self.stages = stages
        self.holds = holds  # the session's: a deny at the auth stage refuses every later MAIL
        self.journal = journal
        self.failures = 0
        self._exchange: sasl.Exchange | None = None  # the exchange in progress
        self._mechanism = ""

    async def begin(self, mechanism: str, initial: bytes | None) -> Reply:
        """AUTH MECHANISM [initial-response]."""
        self._exchange, self._mechanism = sasl.start(mechanism), mechanism
        return await self.respond(initial)

    def cancel(self) -> Reply:
        """The client answered a challenge with "*"."""
        self._exchange = None
        return replies.AUTH_CANCELLED

    def abandon(self) -> None:
        """A refused line ended the exchange (the connection is back in READY)."""
        self._exchange = None

    async def respond(self, response: bytes | None) -> Reply:
        """One response of the exchange: a 334 challenge back, or the credentials checked."""
        assert self._exchange is not None
        try:
            step = self._exchange.step(response)
        except sasl.SaslError as exc:
            return await self._failed(replies.AUTH_FAILED, "", str(exc))
        if isinstance(step, bytes):
            return replies.challenge(step)
        self._exchange = None
        assert self.passwords is not None, "AUTH is offered only with a password file"
        client, user = f"auth:{self.ctx.client.address}", f"auth-user:{step.username}"
        if not self.exempt and (wait := self.anvil.locked_out(client, user)) > 0:
            # Locked out: the password is not even looked at (a right one would not lift it).
            return await self._failed(replies.AUTH_LOCKED_OUT, step.username, f"locked out for {wait:.0f}s more")
        if not await trio.to_thread.run_sync(self.passwords.check, step.username, step.password, limiter=_CHECKS):
            if not self.exempt:
                limits = self.limits
                for key, limit in ((client, limits.auth_failures), (user, limits.auth_user_failures)):
                    if self.anvil.failed(key, limit, limits.interval, limits.lockout):
                        log.warning("%s locked out of AUTH for %.0fs after %d failures", key, limits.lockout, limit)
            return await self._failed(replies.AUTH_FAILED, step.username, "wrong user name or password")
        self.ctx.auth = step.username
        verdict = await self.stages.run("auth")
        if verdict.refuses:
            self.ctx.auth = ""
            if verdict.kind == "deny":  # every later MAIL of the session is refused too, with a MAIL reply
                text = verdict.answer.text
                mail_reply = Reply.of(450, "4.7.1", text) if verdict.answer.code < 500 else Reply.of(554, "5.7.1", text)
                self.holds.hold(Verdict("deny", mail_reply, by=verdict.by))
            if verdict.answer is replies.HOOK_FAILED:
                return await self._failed(replies.AUTH_TEMPORARY, step.username, f"{verdict.by} raised", password_ok=True)
            return await self._failed(verdict.answer, step.username, f"refused by {verdict.by}", password_ok=True)
        self.holds.hold(verdict)  # a quarantine holds every message of the session
        await self.journal(
            qe.Authenticated(at=time.time(), session_id=self.ctx.session_id, mechanism=self._mechanism, username=step.username)
        )
        log.info("session %s: [%s] authenticated as %s (%s)", self.ctx.session_id, self.ctx.client.address, step.username, self._mechanism)
        return replies.AUTH_OK

    async def _failed(self, reply: Reply, username: str, reason: str, *, password_ok: bool = False) -> Reply:
        """Journal and log a failed AUTH (never the password); past max_failures, 421."""
        self._exchange = None
        self.failures += 1
        if self.failures >= self.max_failures:
            reply = replies.TOO_MANY_AUTH_FAILURES
        event = qe.AuthFailed(
            at=time.time(),
            session_id=self.ctx.session_id,
            mechanism=self._mechanism,
            username=username,
            reply=str(reply),
            password_ok=password_ok,
        )
        await self.journal(event)
        # One line per failure with the client's address, as fail2ban and the like expect.
        log.warning(
            "session %s: [%s] AUTH %s failed for %r: %s", self.ctx.session_id, self.ctx.client.address, self._mechanism, username, reason
        )
        return reply
