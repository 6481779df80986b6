"""MTA-STS (RFC 8461): a domain's published promise that its MX hosts take mail over TLS
with certificates that verify, and which hosts those are.

- `_mta-sts.DOMAIN` TXT "v=STSv1; id=..." says a policy exists (exactly one such record);
- the policy is fetched from https://mta-sts.DOMAIN/.well-known/mta-sts.txt over verified
  TLS (the certificate must name mta-sts.DOMAIN), no redirects, at most 64 KiB, within a
  timeout; its lines: version STSv1, mode enforce | testing | none, mx patterns, max_age;
- a policy is kept (in memory and in a file beside the journal, so across restarts) until
  its max_age runs out, and fetched again when the TXT id changes or half its age has gone;
  a fetch that fails keeps the policy in hand (RFC 8461 5.1: an attacker must not be able to
  make it go away by blocking the fetch);
- enforce: only MX hosts that match a pattern, and only over TLS verified at `verify`
  (the certificate chains to a trusted CA and names the MX host); testing: delivered as
  without a policy (the failures are for TLS reports).
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import trio

from . import https
from .dns import AnswerCache, DnsPermanent, DnsTemporary

log = logging.getLogger(__name__)

MAX_POLICY = 64 * 1024  # octets of a policy read (RFC 8461 3.3: "a reasonable maximum size")
FETCH_TIMEOUT = 60.0  # seconds for the whole fetch (RFC 8461 3.3: "at least a minute" is too long for a session; ample here)
FETCH_FAILURES = (OSError, https.HttpsError, ssl.SSLError, trio.TooSlowError, trio.BrokenResourceError, UnicodeDecodeError)
MAX_AGE = 31_557_600  # RFC 8461 3.2: max_age at most a year
Mode = Literal["enforce", "testing", "none"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    domain: str
    id: str  # the TXT record's id it was fetched for
    mode: Mode
    mx: tuple[str, ...]  # patterns: "mx.example.com", "*.example.net"
    max_age: int
    fetched_at: float

    def expired(self, now: float) -> bool:
        return now >= self.fetched_at + self.max_age

    def stale(self, now: float) -> bool:
        """Past half its age: fetched again (RFC 8461 5.1: refreshed before it expires)."""
        return now >= self.fetched_at + self.max_age / 2

    def allows(self, host: str) -> bool:
        """Whether an MX host matches one of the policy's patterns (a wildcard: one leftmost label)."""
        name = host.lower().rstrip(".")
        for pattern in self.mx:
            pattern = pattern.lower().rstrip(".")
            if pattern.startswith("*."):
                head, _, rest = name.partition(".")
                if head and rest == pattern[2:]:
                    return True
            elif name == pattern:
                return True
        return False


class PolicyError(ValueError):
    """A policy (or its TXT record) that does not read."""


def txt_id(records: list[bytes]) -> str | None:
    """The id of the one "v=STSv1" TXT record, or None: no policy (RFC 8461 3.1: none, or several)."""
    found = [r for r in records if r.startswith(b"v=STSv1")]
    if len(found) != 1:
        return None
    fields = dict(part.strip().partition(b"=")[::2] for part in found[0].split(b";") if part.strip())
    value = fields.get(b"id", b"")
    if not value or not value.isalnum() or len(value) > 32:
        return None
    return value.decode()


def parse(domain: str, text: str, *, policy_id: str, now: float) -> Policy:
    """The policy file (RFC 8461 3.2), PolicyError if it does not read."""
    fields: dict[str, list[str]] = {}
    for line in text.replace("\r\n", "\n").split("\n"):
        key, colon, value = line.partition(":")
        if colon:
            fields.setdefault(key.strip().lower(), []).append(value.strip())
    if fields.get("version") != ["STSv1"]:
        raise PolicyError("version is not STSv1")
    mode = (fields.get("mode") or [""])[0]
    if mode not in ("enforce", "testing", "none"):
        raise PolicyError(f"mode {mode!r}")
    age = (fields.get("max_age") or [""])[0]
    if not age.isdigit():
        raise PolicyError(f"max_age {age!r}")
    mx = tuple(fields.get("mx", ()))
    if mode != "none" and not mx:
        raise PolicyError("no mx")
    return Policy(domain=domain, id=policy_id, mode=mode, mx=mx, max_age=min(int(age), MAX_AGE), fetched_at=now)  # type: ignore[arg-type]


class Policies:
    """The policies in hand, kept in `path` (JSON) so that a restart does not forget them."""

    def __init__(self, path: Path | None, dns: AnswerCache, *, context: ssl.SSLContext, port: int = 443) -> None:
        self.path = path
        self.dns = dns
        self.context = context  # verified: the certificate must chain to a trusted CA
        self.port = port  # 443; tests point it elsewhere
        self.kept: dict[str, Policy] = self._load()
        self.unfetched: dict[str, str] = {}  # domains whose announced policy could not be had, and why (sts-policy-fetch-error)

    async def policy(self, domain: str) -> Policy | None:
        """The policy in force for `domain` now, or None."""
        domain = domain.lower().rstrip(".")
        now = time.time()
        kept = self.kept.get(domain)
        if kept is not None and kept.expired(now):
            kept = None
        try:
            policy_id = txt_id(await self.dns.txt(f"_mta-sts.{domain}"))
        except (DnsTemporary, DnsPermanent):
            return kept  # the DNS cannot say: what we have, if anything
        if policy_id is None:
            return kept  # no record (now): a policy in hand is kept until it expires (RFC 8461 5.1)
        if kept is not None and kept.id == policy_id and not kept.stale(now):
            return kept
        try:
            fetched = parse(domain, await self.fetch(domain), policy_id=policy_id, now=now)
        except (
            OSError,
            PolicyError,
            https.HttpsError,
            ssl.SSLError,
            trio.TooSlowError,
            trio.BrokenResourceError,
            UnicodeDecodeError,
        ) as exc:
            log.warning("MTA-STS: cannot fetch the policy of %s: %s%s", domain, exc, " (the one in hand stays)" if kept else "")
            if kept is None:
                self.unfetched[domain] = f"cannot fetch the MTA-STS policy of {domain}: {exc}"
            return kept
        self.unfetched.pop(domain, None)
        self.kept[domain] = fetched
        await trio.to_thread.run_sync(self._save)  # a small file, but not written in the event loop
        return fetched

    async def fetch(self, domain: str) -> str:
        """GET https://mta-sts.DOMAIN/.well-known/mta-sts.txt: HTTP/1.0 (no chunks), verified
        TLS, no redirects, at most MAX_POLICY octets."""
        host = f"mta-sts.{domain}"
        status, body = await https.request(
            host, "/.well-known/mta-sts.txt", dns=self.dns, context=self.context, port=self.port, limit=MAX_POLICY, timeout=FETCH_TIMEOUT
        )
        if status != 200:  # RFC 8461 3.3: redirects are not followed
            raise PolicyError(f"https://{host}/.well-known/mta-sts.txt: HTTP status {status}")
        if len(body) > MAX_POLICY:
            raise PolicyError(f"the policy is larger than {MAX_POLICY} octets")
        return body.decode("utf-8")

    def _load(self) -> dict[str, Policy]:
        return self.read(self.path) if self.path is not None else {}

    @staticmethod
    def read(path: Path) -> dict[str, Policy]:
        """The policies kept in `path` (for the TLS reports too); {} when there is none."""
        if not path.exists():
            return {}
        try:
            rows = json.loads(path.read_text())
            return {row["domain"]: Policy(**{**row, "mx": tuple(row["mx"])}) for row in rows}
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.warning("MTA-STS: %s does not read (%s): policies are fetched again", path, exc)
            return {}

    def _save(self) -> None:
        if self.path is None:
            return
        now = time.time()
        rows = [asdict(p) for p in self.kept.values() if not p.expired(now)]
        temporary = self.path.with_suffix(".tmp")
        try:
            temporary.write_text(json.dumps(rows))
            os.replace(temporary, self.path)
        except OSError as exc:
            log.warning("MTA-STS: cannot keep the policies in %s: %s", self.path, exc)
