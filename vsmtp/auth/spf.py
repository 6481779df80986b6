"""SPF (RFC 7208) with pyspf, on DNS answers vsmtp gives it.

pyspf evaluates the record (mechanisms, macros, the limits of 10 DNS-querying terms and 2
void lookups, RFC 7208 4.6.4) and asks for DNS answers through its module function
`DNSLookup`, replaced here by one that answers from the `answers` given, and notes the
questions it could not answer. `evaluate` is pure and does no I/O: it returns the result,
or the questions to answer first. The caller (net/checks/spf.py) looks them up on trio
and evaluates again: each pass costs microseconds, and a record's lookups are asked round
by round, the answers of one round opening the next.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any, Literal

import spf as pyspf

from .results import SpfResult

Question = tuple[str, str]  # (name, type): A, AAAA, MX, PTR, TXT
TEMPORARY = "temporary"  # an answer that could not be had (timeout, SERVFAIL): SPF temperror
# (name, type) -> the answers as pyspf wants them (A/AAAA address text, MX (preference,
# exchange), PTR target text, TXT a tuple of byte strings; [] for NXDOMAIN or no data), or
# TEMPORARY.
Answers = Mapping[Question, list[Any] | str]


class _Unanswered(Exception):
    """A question the answers given do not hold (caught by evaluate, never seen outside)."""


_local = threading.local()  # the pass in progress: its answers and what it found missing


def _lookup(name: str, qtype: str, strict: object = True, timeout: float = 0) -> list[tuple[tuple[str, str], Any]]:
    answers: Answers | None = getattr(_local, "answers", None)
    if answers is None:
        raise pyspf.TempError("DNS: no answers for this check")  # never pyspf's own resolver
    question = (name.lower().rstrip("."), qtype)
    found = answers.get(question)
    if found is None:
        _local.missing.add(question)
        raise _Unanswered(question)
    if found == TEMPORARY:
        raise pyspf.TempError(f"DNS {qtype} {name}: no answer")
    return [((name, qtype), answer) for answer in found]


pyspf.DNSLookup = _lookup


def evaluate(*, client: str, sender: str, helo: str, answers: Answers, receiver: str) -> SpfResult | set[Question]:
    """The SPF result for `sender` (the HELO identity when the sender is null, RFC 7208 2.3)
    sent from `client`, or the DNS questions to answer before it can be given."""
    _local.answers, _local.missing = answers, set()
    try:
        query = pyspf.query(i=client, s=sender, h=helo, receiver=receiver, timeout=3600)  # deadlines are the caller's
        try:
            result, _code, explanation = query.check()
        except _Unanswered:
            return set(_local.missing)
        if _local.missing:  # asked where pyspf swallows errors (an exp= explanation): ask, then again
            return set(_local.missing)
    finally:
        _local.answers = _local.missing = None
    identity: Literal["mailfrom", "helo"] = "helo" if query.ident == "helo" else "mailfrom"
    return SpfResult(
        result=result,
        identity=identity,
        domain=str(query.o or helo).lower(),  # the identity's domain (not a redirect's or an include's)
        sender=str(query.s),
        helo=helo,
        client=client,
        explanation=str(explanation),
    )
