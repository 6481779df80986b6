"""What a new session needs that a reload may change (SessionSettings), and the two ends of a
connection (Peer). Built by the SMTP service (server.py) for each configuration in force and
handed to each session it starts; a running session keeps the settings it started with."""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass

from ..config import Config, ListenerConfig
from ..credentials import PasswordFile
from ..plugins import PluginManager
from ..queue import policy
from ..rules.context import Context
from ..rules.engine import Stages
from ..rules.objects import IpAddress
from ..smtp.server import Extensions, ServerConnection
from . import checks
from .anvil import Anvil
from .counts import ConnectionCounts
from .tls import server_context


@dataclass(frozen=True, slots=True, kw_only=True)
class Peer:
    host: str
    port: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionSettings:
    config: Config
    tls: dict[str, ssl.SSLContext]  # by listener name
    stages: Stages  # the rules file and the plugins, run at each stage
    checks: tuple[checks.Check, ...]  # vsmtp's own checks at the stages (checks/)
    relay_networks: tuple[policy.IpNetwork, ...]
    anvil: Anvil  # the limits shared by every receiving process
    passwords: PasswordFile | None  # who may AUTH; None: AUTH is not offered

    def trusted(self, client: IpAddress) -> bool:
        """A client in relay.networks."""
        return policy.may_relay(client, self.relay_networks)

    def postq_due(self, ctx: Context, recipients: Sequence[str], *, faccepted: bool) -> bool:
        """Whether a message is to take the post-queue stage: rules or plugins run there (and
        the session was not faccepted), or it is to be signed or sealed there."""
        if self.stages.active("postq") and not faccepted:
            return True
        trusted = checks.trusted(ctx, self.relay_networks)
        return policy.signing_due(self.config, trusted=trusted, recipients=recipients)

    def connection(self, listener: ListenerConfig) -> ServerConnection:
        """The protocol state machine for a new session on `listener`."""
        limits = self.config.limits
        mechanisms = self.config.auth.mechanisms if self.passwords is not None and listener.auth else ()
        extensions = Extensions(max_message_size=limits.message_size, starttls=listener.role != "submissions", auth=mechanisms)
        return ServerConnection(extensions=extensions, max_text_line=limits.line_length, tls=False)

    @classmethod
    def build(
        cls, config: Config, plugins: PluginManager | None = None, *, stages: Stages | None = None, anvil: Anvil | None = None
    ) -> SessionSettings:
        """Raises ConfigError (RulesError names the rules file's line) when something is wrong.
        `stages`: the rules and plugins already built from `config` (else built here);
        `anvil`: the process's shared limits (else a private table)."""
        anvil = anvil or Anvil(ConnectionCounts())
        return cls(
            config=config,
            tls={listener.name: server_context(listener, config) for listener in config.listeners},
            stages=stages or Stages.build(config, plugins),
            checks=checks.build(config, anvil),
            relay_networks=policy.relay_networks(config),
            anvil=anvil,
            passwords=PasswordFile(config.auth.passwords) if config.auth.passwords else None,
        )
