"""SPF's evaluation (vsmtp/auth/spf.py) is pure: it gives the result, or the questions to
answer first; asked round by round, with pyspf's lookup limits."""

from __future__ import annotations

from typing import Any

from vsmtp.auth import spf
from vsmtp.auth.results import SpfResult


def run(records: dict[tuple[str, str], list[Any]], *, sender: str = "a@example.org", client: str = "192.0.2.1") -> tuple[Any, int]:
    """Evaluate until there is a result, answering from `records`; the result and the rounds."""
    answers: dict[spf.Question, list[Any] | str] = {}
    for rounds in range(1, 50):
        found = spf.evaluate(client=client, sender=sender, helo="mail.example.org", answers=answers, receiver="mx.test")
        if isinstance(found, SpfResult):
            return found, rounds
        for question in found:
            answers[question] = records.get(question, [])
    raise AssertionError("no result")


def test_questions_come_round_by_round_until_the_result() -> None:
    records = {
        ("example.org", "TXT"): [(b"v=spf1 include:_spf.example.net -all",)],
        ("_spf.example.net", "TXT"): [(b"v=spf1 ip4:192.0.2.0/24 -all",)],
    }
    result, rounds = run(records)
    assert (result.result, result.domain, rounds) == ("pass", "example.org", 3)
    refused, _ = run(records, client="198.51.100.7")
    assert refused.result == "fail"


def test_an_unanswered_question_is_a_temperror_and_too_many_lookups_a_permerror() -> None:
    answers = {("example.org", "TXT"): spf.TEMPORARY}
    found = spf.evaluate(client="192.0.2.1", sender="a@example.org", helo="h", answers=answers, receiver="mx.test")
    assert isinstance(found, SpfResult) and found.result == "temperror"
    chain = "v=spf1 " + " ".join(f"a:h{i}.example.org" for i in range(11)) + " -all"
    records: dict[tuple[str, str], list[Any]] = {("example.org", "TXT"): [(chain.encode(),)]}
    records.update({(f"h{i}.example.org", "A"): ["192.0.2.200"] for i in range(11)})
    assert run(records)[0].result == "permerror"


def test_the_null_sender_is_checked_by_its_helo_name() -> None:
    records = {("mail.example.org", "TXT"): [(b"v=spf1 ip4:192.0.2.1 -all",)]}
    result, _ = run(records, sender="")
    assert (result.result, result.identity, result.sender) == ("pass", "helo", "postmaster@mail.example.org")
