"""DKIM signing and ARC sealing at the post-queue stage, after the rules' and plugins' edits,
so that the signature covers the headers as they are delivered.

- DKIM: mail from trusted clients (authenticated users, relay.networks; or from anyone with
  `dkim.sign_from = "all"`) whose From domain has keys in `[[dkim.sign]]` is signed with
  each of them (rsa-sha256 and ed25519-sha256 at once, if both are configured).
- ARC: mail from other clients that vsmtp forwards to another domain is sealed with
  `[arc.seal]`, from the Authentication-Results the data stage added.

Keys are read when the delivery process starts (and on reload): an unreadable key stops it,
naming the file. Which messages take this stage is policy.signing_due.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from ..auth import arc, dmarc
from ..auth.dkim import Signer, SigningKey
from ..config import Config
from ..queue import events as qe
from ..queue import policy


class Signing:
    def __init__(self, config: Config) -> None:
        """ConfigError names a key file that cannot be used."""
        self.config = config
        self.signer = (
            Signer([SigningKey.load(k) for k in config.dkim.sign], headers=config.dkim.headers, oversign=config.dkim.oversign)
            if config.dkim.sign
            else None
        )
        self.sealer = SigningKey.load(config.arc.seal) if config.arc.seal is not None else None
        self.networks = policy.relay_networks(config)

    def trusted(self, client: ipaddress.IPv4Address | ipaddress.IPv6Address, auth: str) -> bool:
        return bool(auth) or policy.may_relay(client, self.networks)

    def apply(
        self, message: bytes, *, trusted: bool, recipients: Sequence[str], queue_id: str, now: float
    ) -> tuple[bytes, list[qe.JournalEvent]]:
        """The message signed and/or sealed, and the message.signed events saying so.
        Blocking (hashing, RSA): run it in a worker thread."""
        events: list[qe.JournalEvent] = []
        if self.signer is not None and (trusted or self.config.dkim.sign_from == "all"):
            authors = dmarc.from_domains(message)
            fields = self.signer.sign(message, authors[0]) if len(authors) == 1 else b""
            if fields:
                message = fields + message
                used = self.signer.keys_for(authors[0])
                events.append(qe.MessageSigned(at=now, queue_id=queue_id, method="dkim", signatures=tuple(_describe(k) for k in used)))
        remote = any(policy.remote_domain(r, self.config) for r in recipients)
        if self.sealer is not None and not trusted and remote:
            fields = arc.seal(message, self.sealer, authserv_id=self.config.hostname, now=int(now))
            if fields:
                message = fields + message
                events.append(qe.MessageSigned(at=now, queue_id=queue_id, method="arc", signatures=(_describe(self.sealer),)))
        return message, events


def _describe(key: SigningKey) -> str:
    return f"d={key.domain} s={key.selector} a={key.algorithm}"
