"""SMTP AUTH (RFC 4954) over real sockets and real TLS: offered only after STARTTLS, PLAIN
and LOGIN with smtplib and swaks, relaying for the authenticated, what the journal and the
log keep (never the password), the failure limit, listeners that require AUTH, and the auth
stage of the rules: a rule that denies, one that accepts, a hook that raises."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import smtplib
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme

from vsmtp.config import Config
from vsmtp.credentials import hash_password
from vsmtp.daemon import Running

from ..clients import BlockingClient
from ..conftest import has_tag, maildir_files, port_of, wait_delivered, wait_journal, with_changes
from ..daemon import run_cli
from ..rules.test_stages import rules_file

PASSWORD = "correct horse battery staple"
USERS = ("alice@example.org", "mallory@example.org")


@pytest.fixture
def passwords(tmp_path: Path) -> Path:
    path = tmp_path / "passwords"
    path.write_text("# vsmtp auth hash USER\n" + "".join(f"{user}:{hash_password(PASSWORD)}\n" for user in USERS))
    return path


@pytest.fixture
def auth_config(config: Config, passwords: Path) -> Config:
    return with_changes(config, auth={"passwords": str(passwords)})


def tls_context(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


def login(client: smtplib.SMTP, user: str, password: str = PASSWORD, mechanism: str = "PLAIN") -> tuple[int, bytes]:
    """One AUTH (smtplib's login() would try the next mechanism after a failure); its reply."""
    client.user, client.password = user, password
    try:
        return client.auth(mechanism, getattr(client, f"auth_{mechanism.lower()}"), initial_response_ok=mechanism == "PLAIN")
    except smtplib.SMTPAuthenticationError as exc:
        return exc.smtp_code, exc.smtp_error


def over_tls(running: Running, ca: trustme.CA, script: Callable[[smtplib.SMTP], Any]) -> Any:
    """Run `script(client)` in a thread, after EHLO, STARTTLS and EHLO again."""

    def run() -> Any:
        with smtplib.SMTP("127.0.0.1", port_of(running), timeout=10) as client:
            client.starttls(context=tls_context(ca))
            client.ehlo("client.test")
            return script(client)

    return trio.to_thread.run_sync(run)


async def test_auth_is_offered_only_over_tls(start_server: Any, auth_config: Config, ca: trustme.CA) -> None:
    running = await start_server(auth_config)

    def in_clear() -> tuple[bool, tuple[int, bytes]]:
        with smtplib.SMTP("127.0.0.1", port_of(running), timeout=10) as client:
            client.ehlo("client.test")
            return client.has_extn("auth"), client.docmd("AUTH", "PLAIN " + "AGFsaWNlQGV4YW1wbGUub3JnAHg=")

    offered, refused = await trio.to_thread.run_sync(in_clear)
    assert not offered
    assert refused == (538, b"5.7.11 Encryption required for requested authentication mechanism")
    after_tls = await over_tls(running, ca, lambda client: client.esmtp_features.get("auth"))
    assert after_tls == " PLAIN LOGIN"
    records = list(running.journal.read(0))
    assert not any(r.tag.startswith("session.auth") for r in records)  # the refused AUTH never checked anything
    running.cancel_scope.cancel()


async def test_without_a_password_file_auth_is_not_enabled(server: Running, ca: trustme.CA) -> None:
    def script(client: smtplib.SMTP) -> tuple[bool, tuple[int, bytes]]:
        return client.has_extn("auth"), client.docmd("AUTH", "PLAIN")

    offered, reply = await over_tls(server, ca, script)
    assert not offered and reply == (503, b"5.5.1 Error: authentication not enabled")


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
async def test_a_user_logs_in_and_may_relay(start_server: Any, auth_config: Config, ca: trustme.CA, mechanism: str) -> None:
    running = await start_server(auth_config)

    def script(client: smtplib.SMTP) -> list[tuple[int, bytes]]:
        client.mail("alice@example.org")
        before = client.rcpt("carol@elsewhere.test")  # 127.0.0.1 is not in relay.networks here
        client.rset()
        logged_in = login(client, "alice@example.org", mechanism=mechanism)
        client.mail("alice@example.org")
        after = client.rcpt("carol@elsewhere.test")
        return [before, logged_in, after]

    before, logged_in, after = await over_tls(running, ca, script)
    assert before == (554, b"5.7.1 Relay access denied")
    assert logged_in == (235, b"2.7.0 Authentication successful")
    assert after == (250, b"2.1.5 Ok")
    records = await wait_journal(running, has_tag("session.authenticated"))
    [event] = [r.payload for r in records if r.tag == "session.authenticated"]
    assert event["username"] == "alice@example.org" and event["mechanism"] == mechanism
    running.cancel_scope.cancel()


async def test_the_received_field_says_esmtpsa(start_server: Any, auth_config: Config, ca: trustme.CA) -> None:
    running = await start_server(auth_config)

    def script(client: smtplib.SMTP) -> None:
        assert login(client, "alice@example.org")[0] == 235
        client.sendmail("alice@example.org", ["bob@localhost"], b"Subject: a\r\n\r\nsent after AUTH\r\n")

    await over_tls(running, ca, script)
    await wait_delivered(running, 1)
    head = maildir_files(auth_config, "bob")[0].read_bytes().partition(b"\r\n\r\n")[0]
    assert b"with ESMTPSA id" in head  # RFC 3848
    running.cancel_scope.cancel()


async def test_a_wrong_password_is_refused_and_never_kept(
    start_server: Any, auth_config: Config, ca: trustme.CA, caplog: pytest.LogCaptureFixture
) -> None:
    running = await start_server(auth_config)
    caplog.set_level(logging.INFO)

    def script(client: smtplib.SMTP) -> tuple[int, bytes]:
        return login(client, "alice@example.org", "not-the-password")

    assert await over_tls(running, ca, script) == (535, b"5.7.8 Authentication credentials invalid")
    records = await wait_journal(running, has_tag("session.auth_failed"))
    [event] = [r.payload for r in records if r.tag == "session.auth_failed"]
    assert event["username"] == "alice@example.org" and event["reply"].startswith("535 5.7.8") and not event["password_ok"]
    assert not any(b"not-the-password" in repr(r.payload).encode() for r in records)
    assert "not-the-password" not in caplog.text
    assert "[127.0.0.1] AUTH PLAIN failed for 'alice@example.org'" in caplog.text  # what fail2ban reads
    running.cancel_scope.cancel()


async def test_an_unknown_user_is_refused_like_a_wrong_password(start_server: Any, auth_config: Config, ca: trustme.CA) -> None:
    running = await start_server(auth_config)

    refused = await over_tls(running, ca, lambda client: login(client, "nobody@example.org"))
    assert refused == (535, b"5.7.8 Authentication credentials invalid")
    running.cancel_scope.cancel()


async def test_too_many_failures_close_the_session(start_server: Any, auth_config: Config, ca: trustme.CA) -> None:
    running = await start_server(with_changes(auth_config, auth={"max_failures": 2}))

    def attack() -> list[str]:
        with BlockingClient(port_of(running)) as client:
            client.replies(1)
            client.say(b"EHLO c\r\n")
            client.say(b"STARTTLS\r\n")
            client.start_tls(tls_context(ca))
            client.say(b"EHLO c\r\n")
            wrong = b"AUTH PLAIN AGFsaWNlQGV4YW1wbGUub3JnAHdyb25n\r\n"  # \0alice@example.org\0wrong
            answers = client.say(wrong) + client.say(wrong)
            with pytest.raises((EOFError, ConnectionError)):
                client.say(b"NOOP\r\n")
            return answers

    first, second = await trio.to_thread.run_sync(attack)
    assert first.startswith("535 5.7.8") and second.startswith("421 4.7.0")
    running.cancel_scope.cancel()


async def test_a_sasl_exchange_can_be_cancelled_and_must_be_base64(start_server: Any, auth_config: Config, ca: trustme.CA) -> None:
    running = await start_server(auth_config)

    def script() -> list[str]:
        with BlockingClient(port_of(running)) as client:
            client.replies(1)
            client.say(b"EHLO c\r\n")
            client.say(b"STARTTLS\r\n")
            client.start_tls(tls_context(ca))
            client.say(b"EHLO c\r\n")
            return [
                *client.say(b"AUTH LOGIN\r\n"),  # 334 VXNlcm5hbWU6 ("Username:")
                *client.say(b"*\r\n"),  # RFC 4954 4: the client cancels
                *client.say(b"AUTH PLAIN\r\n"),  # 334 with an empty challenge
                *client.say(b"not base64!\r\n"),
                *client.say(b"AUTH CRAM-MD5\r\n"),
                *client.say(b"MAIL FROM:<alice@example.org> AUTH=<>\r\n"),  # RFC 4954 5: accepted, not trusted
                *client.say(b"AUTH PLAIN AGFsaWNlQGV4YW1wbGUub3JnAHg=\r\n"),  # in a transaction
            ]

    answers = await trio.to_thread.run_sync(script)
    assert answers == [
        "334 VXNlcm5hbWU6",
        "501 5.0.0 Authentication cancelled",
        "334 ",
        "501 5.5.2 Cannot decode response",
        "504 5.5.4 Unrecognized authentication type",
        "250 2.1.0 Ok",
        "503 5.5.1 Error: MAIL transaction in progress",
    ]
    running.cancel_scope.cancel()


async def test_a_listener_that_requires_auth(start_server: Any, auth_config: Config, ca: trustme.CA) -> None:
    listener = dataclasses.replace(auth_config.listeners[0], name="submission", role="submission", require_auth=True)
    running = await start_server(with_changes(auth_config, listeners=(listener,)))

    def script(client: smtplib.SMTP) -> list[tuple[int, bytes]]:
        before = client.mail("alice@example.org")
        login(client, "alice@example.org")
        return [before, client.mail("alice@example.org")]

    before, after = await over_tls(running, ca, script)
    assert before == (530, b"5.7.0 Authentication required") and after[0] == 250
    running.cancel_scope.cancel()


SWAKS = shutil.which("swaks")


@pytest.mark.skipif(SWAKS is None, reason="swaks is not installed: `make test` installs it with apt-get when it runs as root on Debian")
async def test_swaks_auth_login_then_relay(start_server: Any, auth_config: Config) -> None:
    running = await start_server(auth_config)
    assert SWAKS is not None
    result = await trio.run_process(
        [SWAKS, "--server", "127.0.0.1", "--port", str(port_of(running)), "--helo", "client.test", "--timeout", "10", "--tls",
         "--auth", "LOGIN", "--auth-user", "alice@example.org", "--auth-password", PASSWORD,
         "--from", "alice@example.org", "--to", "bob@localhost"],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )  # fmt: skip
    transcript = result.stdout.decode(errors="replace")
    assert result.returncode == 0, transcript
    assert "<~  235 2.7.0 Authentication successful" in transcript
    await wait_delivered(running, 1)
    running.cancel_scope.cancel()


async def test_a_deny_rule_and_an_accept_rule_at_the_auth_stage(
    start_server: Any, auth_config: Config, ca: trustme.CA, tmp_path: Path
) -> None:
    rules = rules_file(
        tmp_path,
        """
        @rule.auth
        def no_mallory(ctx):
            if ctx.auth.startswith("mallory@"):
                return deny("535 5.7.1 mallory may not send mail here")
            if ctx.tls and ctx.auth == "alice@example.org":
                return accept()

        @rule.auth
        def never_reached_for_alice(ctx):
            return deny()
        """,
    )
    running = await start_server(dataclasses.replace(auth_config, rules=rules))

    def mallory_then_mail(client: smtplib.SMTP) -> list[tuple[int, bytes]]:
        return [login(client, "mallory@example.org"), client.mail("mallory@example.org")]  # the deny holds for the session

    denied, mail = await over_tls(running, ca, mallory_then_mail)
    assert denied == (535, b"5.7.1 mallory may not send mail here")
    assert mail == (554, b"5.7.1 mallory may not send mail here")
    assert await over_tls(running, ca, lambda client: login(client, "alice@example.org")) == (235, b"2.7.0 Authentication successful")
    records = await wait_journal(running, has_tag("session.authenticated"))
    verdicts = [(r.payload["by"], r.payload["verdict"]) for r in records if r.tag == "rule.verdict"]
    assert verdicts == [("rules:no_mallory", "deny"), ("rules:no_mallory", "accept")]
    [failed] = [r.payload for r in records if r.tag == "session.auth_failed"]
    assert failed["username"] == "mallory@example.org" and failed["password_ok"]
    [succeeded] = [r.payload for r in records if r.tag == "session.authenticated"]
    assert succeeded["username"] == "alice@example.org"
    running.cancel_scope.cancel()


async def test_an_auth_hook_that_raises_answers_454_and_the_next_session_is_served(
    start_server: Any, auth_config: Config, ca: trustme.CA, tmp_path: Path
) -> None:
    rules = rules_file(
        tmp_path,
        """
        @rule.auth
        def broken(ctx):
            if ctx.auth.startswith("mallory@"):
                raise RuntimeError("the directory is down")
        """,
    )
    running = await start_server(dataclasses.replace(auth_config, rules=rules))

    failed = await over_tls(running, ca, lambda client: login(client, "mallory@example.org"))
    assert failed == (454, b"4.7.0 Temporary authentication failure")
    assert (await over_tls(running, ca, lambda client: login(client, "alice@example.org")))[0] == 235
    records = await wait_journal(running, has_tag("session.authenticated"))
    [error] = [r.payload for r in records if r.tag == "rule.verdict"]
    assert error["by"] == "rules:broken" and error["verdict"] == "error" and error["stage"] == "auth"
    running.cancel_scope.cancel()


async def test_the_login_rules_of_the_docs(start_server: Any, auth_config: Config, ca: trustme.CA, tmp_path: Path) -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "rules.md").read_text()
    [example] = [block for block in docs.split("```python\n")[1:] if "logins_from_the_office" in block]
    (tmp_path / "rules.py").write_text(example.split("```")[0])
    running = await start_server(dataclasses.replace(auth_config, rules=str(tmp_path / "rules.py")))

    def alice(client: smtplib.SMTP) -> list[tuple[int, bytes]]:
        logged_in = login(client, "alice@example.org")  # a traveller: from anywhere
        someone_else = client.mail("bob@example.org")
        client.rset()
        return [logged_in, someone_else, client.mail("Alice@Example.org")]

    mallory = await over_tls(running, ca, lambda client: login(client, "mallory@example.org"))
    assert mallory == (535, b"5.7.1 log in from the office network")  # 127.0.0.1 is not the office
    logged_in, someone_else, herself = await over_tls(running, ca, alice)
    assert logged_in[0] == 235
    assert someone_else == (553, b"5.7.1 you may send only as alice@example.org")
    assert herself == (250, b"2.1.0 Ok")
    running.cancel_scope.cancel()


async def test_rules_test_replays_the_logins_whose_password_was_right(
    start_server: Any, auth_config: Config, ca: trustme.CA, tmp_path: Path
) -> None:
    recorded = rules_file(
        tmp_path,
        """
        @rule.auth
        def no_mallory(ctx):
            if ctx.auth.startswith("mallory@"):
                return deny("535 5.7.1 not mallory")
        """,
    )
    changed = tmp_path / "changed.py"
    changed.write_text(
        'from vsmtp.rules import *\n\n@rule.auth\ndef no_alice(ctx):\n    if ctx.auth.startswith("alice@"):\n        return deny()\n'
    )
    config = dataclasses.replace(
        auth_config, rules=recorded, journal=dataclasses.replace(auth_config.journal, path=str(tmp_path / "var" / "journal"))
    )
    running = await start_server(config)
    assert (await over_tls(running, ca, lambda client: login(client, "mallory@example.org")))[0] == 535
    assert (await over_tls(running, ca, lambda client: login(client, "alice@example.org")))[0] == 235
    assert (await over_tls(running, ca, lambda client: login(client, "alice@example.org", "wrong")))[0] == 535  # not replayed
    await wait_journal(running, has_tag("session.closed", 3))

    def cli(rules: str) -> Any:
        return trio.to_thread.run_sync(lambda: run_cli(tmp_path, "rules", "test", rules))

    same = await cli(recorded)
    assert same.stdout.splitlines()[-1] == "3 sessions replayed (2 stage runs): 0 verdicts differ", same.stderr
    other = await cli(str(changed))
    lines = other.stdout.splitlines()
    assert lines[-1] == "3 sessions replayed (2 stage runs): 2 verdicts differ", other.stderr
    assert sorted(line.split(": ", 1)[1] for line in lines[:-1]) == [
        "auth: deny 535 5.7.1 not mallory -> next",
        "auth: next -> deny 535 5.7.1 Authentication refused by policy",
    ]
    running.cancel_scope.cancel()


async def test_the_login_is_known_after_queueing(start_server: Any, auth_config: Config, ca: trustme.CA, tmp_path: Path) -> None:
    rules = rules_file(
        tmp_path,
        """
        @rule.postq
        def stamp(ctx):
            ctx.add_header("X-Sent-By", ctx.auth or "nobody")
        """,
    )
    running = await start_server(dataclasses.replace(auth_config, rules=rules))

    def script(client: smtplib.SMTP) -> None:
        assert login(client, "alice@example.org")[0] == 235
        client.sendmail("alice@example.org", ["bob@localhost"], b"Subject: a\r\n\r\nx\r\n")

    await over_tls(running, ca, script)
    await wait_delivered(running, 1)
    assert b"\r\nX-Sent-By: alice@example.org\r\n" in maildir_files(auth_config, "bob")[0].read_bytes()
    running.cancel_scope.cancel()
