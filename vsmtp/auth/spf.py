"""SPF (RFC 7208) with pyspf, on DNS answers vsmtp gives it.

pyspf evaluates the record (mechanisms, macros, the limits of 10 DNS-querying terms and 2
void lookups, RFC 7208 4.6.4) and asks for DNS answers through its module function
`DNSLookup`. That function is replaced here, once, by one that hands each question to the
`Lookup` of the calling thread: check() runs in a worker thread, and its Lookup asks vsmtp's
resolver on trio (net/dns.py) within the check's deadline. Nothing here opens a socket.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Literal

import spf as pyspf

from .results import SpfResult

# (name, type) -> the answers as pyspf wants them: A/AAAA address text, MX (preference,
# exchange), PTR target text, TXT a tuple of byte strings. [] for NXDOMAIN or no data.
# Raises TemporaryLookupError when the answer cannot be had (timeout, SERVFAIL).
Lookup = Callable[[str, str], list[Any]]


class TemporaryLookupError(Exception):
    """A DNS question that could not be answered now (becomes SPF temperror)."""


_local = threading.local()


def _lookup(name: str, qtype: str, strict: object = True, timeout: float = 0) -> list[tuple[tuple[str, str], Any]]:
    lookup: Lookup | None = getattr(_local, "lookup", None)
    if lookup is None:
        raise pyspf.TempError("DNS: no resolver for this check")  # never pyspf's own resolver
    try:
        return [((name, qtype), answer) for answer in lookup(name, qtype)]
    except TemporaryLookupError as exc:
        raise pyspf.TempError(f"DNS {exc}") from exc


pyspf.DNSLookup = _lookup


def check(*, client: str, sender: str, helo: str, lookup: Lookup, receiver: str) -> SpfResult:
    """The SPF result for `sender` (the HELO identity when the sender is null, RFC 7208 2.3)
    sent from `client`. Blocking: run it in a worker thread, with `lookup` bound to it."""
    _local.lookup = lookup
    try:
        query = pyspf.query(i=client, s=sender, h=helo, receiver=receiver, timeout=3600)  # deadlines are the lookup's
        result, _code, explanation = query.check()
    finally:
        _local.lookup = None
    identity: Literal["mailfrom", "helo"] = "helo" if query.ident == "helo" else "mailfrom"
    domain = query.o or helo  # the identity's domain (not a redirect's or an include's)
    return SpfResult(
        result=result,
        identity=identity,
        domain=str(domain).lower(),
        sender=str(query.s),
        helo=helo,
        client=client,
        explanation=str(explanation),
    )
