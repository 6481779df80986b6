"""Routes: which transport a recipient takes and why (queue/policy.py), and the recipient
delimiter (bob+lists@ is bob's mail) from RCPT to the mailbox."""

from __future__ import annotations

import smtplib
from typing import Any

import pytest
import trio

from vsmtp.config import Config
from vsmtp.queue import policy

from ..conftest import maildir_files, port_of, wait_delivered, with_changes


def routed(address: str, config: Config) -> tuple[str, str]:
    chosen, why = policy.routed(address, config)
    return chosen.text, why


def test_each_recipient_gets_its_transport_and_the_reason(config: Config) -> None:
    configured = with_changes(
        config,
        local={"domains": ("example.org", "lists.example.org"), "recipient_delimiter": "+-"},
        delivery={"mailbox": "lmtp:unix:/run/dovecot/lmtp", "mailboxes": {"bob": "mbox", "@lists.example.org": "lmtp:[::1]:2424"}},
    )
    assert routed("alice@example.org", configured) == ("lmtp:unix:/run/dovecot/lmtp", "mailbox")
    assert routed("bob+lists@example.org", configured) == ("mbox", "mailboxes")
    assert routed("bob-x@example.org", configured) == ("mbox", "mailboxes")
    assert routed("any@lists.example.org", configured) == ("lmtp:[::1]:2424", "mailboxes")
    assert routed("carol@far.test", configured) == ("smtp:far.test", "mx")
    relayed = with_changes(configured, relayhost={"url": "smtp://relay.example:587"})
    assert routed("carol@far.test", relayed) == ("smtp:far.test", "relayhost")
    mailbox = policy.route("bob+lists@example.org", configured)
    assert isinstance(mailbox, policy.LocalRoute) and (mailbox.user, mailbox.extension) == ("bob", "lists")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("lmtp:127.0.0.1:24", policy.LmtpRoute(host="127.0.0.1", port=24)),
        ("lmtp:[::1]:24", policy.LmtpRoute(host="::1", port=24)),
        ("lmtp:inet:localhost", policy.LmtpRoute(host="localhost", port=24)),
        ("lmtp:unix:/var/run/lmtp", policy.LmtpRoute(path="/var/run/lmtp")),
        ("pipe:lda", policy.PipeRoute(name="lda")),
        ("discard", policy.DiscardRoute()),
        ("error:go away", policy.ErrorRoute(reason="go away")),
    ],
)
def test_transport_texts(text: str, expected: policy.Route) -> None:
    assert policy.transport_route(text, user="u", domain="d") == expected


@pytest.mark.parametrize("text", ["lmtp:", "lmtp:host:port", "pip:x", "smtp", "maildir:x"])
def test_a_bad_transport_text_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="expected"):
        policy.transport_route(text, user="u", domain="d")


async def test_an_address_with_an_extension_is_its_users(start_server: Any, config: Config) -> None:
    configured = with_changes(config, local={"users": ("bob",), "catch_all": False, "recipient_delimiter": "+"})
    running = await start_server(configured)

    def send() -> tuple[int, int]:
        with smtplib.SMTP("127.0.0.1", port_of(running), timeout=10) as client:
            client.ehlo("client.test")
            client.mail("a@example.org")
            known = client.rcpt("bob+lists@localhost")[0]
            unknown = client.rcpt("carol+lists@localhost")[0]
            client.data(b"Subject: x\r\n\r\nbody\r\n")
            return known, unknown

    assert await trio.to_thread.run_sync(send) == (250, 550)
    await wait_delivered(running, 1)
    [delivered] = maildir_files(configured, "bob")
    assert b"Delivered-To: bob+lists@localhost\r\n" in delivered.read_bytes()
