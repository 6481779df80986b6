"""TLS over real sockets: STARTTLS (RFC 3207), implicit TLS (RFC 8314), SNI, the self-signed
fallback, the injection attack, and what the Received header says about it."""

from __future__ import annotations

import logging
import smtplib
import ssl
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme

from vsmtp.config import CertificateConfig, Config, ListenerConfig
from vsmtp.daemon import Running

from ..clients import BlockingClient
from ..conftest import has_tag, maildir_files, port_of, wait_delivered, wait_journal, with_changes

MESSAGE = b"Subject: tls\r\n\r\nover TLS\r\n"


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


def with_listener(config: Config, **changes: Any) -> Config:
    listener = ListenerConfig(**{"addresses": ("127.0.0.1:0",), "certificates": config.listeners[0].certificates, **changes})
    return with_changes(config, listeners=(listener,))


def issue(ca: trustme.CA, directory: Path, *names: str) -> CertificateConfig:
    cert = ca.issue_cert(*names)
    cert.cert_chain_pems[0].write_to_path(str(directory / f"{names[0]}.pem"))
    cert.private_key_pem.write_to_path(str(directory / f"{names[0]}.key"))
    return CertificateConfig(certificate=str(directory / f"{names[0]}.pem"), key=str(directory / f"{names[0]}.key"), names=names)


async def test_starttls_then_ehlo_again_and_the_received_header_says_so(server: Running, config: Config, ca: trustme.CA) -> None:
    def send() -> tuple[set[str], set[str], str]:
        with smtplib.SMTP("127.0.0.1", port_of(server), timeout=10) as client:
            client.ehlo("client.test")
            before = set(client.esmtp_features)
            client.starttls(context=client_context(ca))
            client.ehlo("client.test")  # RFC 3207: the client must say EHLO again
            after = set(client.esmtp_features)
            client.sendmail("a@example.org", ["bob@localhost"], MESSAGE)
            return before, after, client.sock.version() or ""  # type: ignore[union-attr]

    before, after, version = await trio.to_thread.run_sync(send)
    assert "starttls" in before and "starttls" not in after  # not offered twice
    assert version == "TLSv1.3"  # 1.3 is preferred when the client has it
    await wait_delivered(server, 1)
    data = maildir_files(config, "bob")[0].read_bytes()
    head = data.partition(b"\r\n\r\n")[0].decode()
    assert "(using TLSv1.3 with cipher TLS_" in head
    assert "with ESMTPS id" in head
    assert data.endswith(b"\r\n\r\nover TLS\r\n")
    records = await wait_journal(server, has_tag("tls.started"))
    started = next(r for r in records if r.tag == "tls.started").payload
    assert started["version"] == "TLSv1.3" and started["cipher"].startswith("TLS_")


async def test_plaintext_injected_behind_starttls_is_never_executed(server: Running, ca: trustme.CA) -> None:
    # CVE-2011-0411: commands sent in the same packet as STARTTLS must not run inside TLS.
    def attack() -> tuple[list[str], list[str]]:
        with BlockingClient(port_of(server)) as client:
            client.replies(1)
            client.say(b"EHLO c\r\n")
            ready = client.say(b"STARTTLS\r\nMAIL FROM:<injected@evil.example>\r\n")
            client.start_tls(client_context(ca))
            client.say(b"EHLO c\r\n")
            # Had the injected MAIL run, this RCPT would be accepted.
            return ready, client.say(b"RCPT TO:<bob@localhost>\r\n")

    ready, answer = await trio.to_thread.run_sync(attack)
    assert ready[0].startswith("220 2.0.0")
    assert answer[0].startswith("503 5.5.1")


async def test_commands_before_a_new_ehlo_are_refused_after_starttls(server: Running, ca: trustme.CA) -> None:
    def talk() -> list[str]:
        with BlockingClient(port_of(server)) as client:
            client.replies(1)
            client.starttls(client_context(ca))
            return client.say(b"MAIL FROM:<a@example.org>\r\n")  # the session is back before EHLO

    [answer] = await trio.to_thread.run_sync(talk)
    assert answer.startswith("503 5.5.1")


async def test_a_failed_handshake_ends_the_session_and_is_journaled(server: Running) -> None:
    def talk() -> bytes:
        with BlockingClient(port_of(server)) as client:
            client.replies(1)
            client.say(b"EHLO c\r\nSTARTTLS\r\n", 2)
            client.send(b"this is not a TLS ClientHello\r\n" * 4)
            return client.read_until_closed()

    assert await trio.to_thread.run_sync(talk) == b""  # closed, nothing said in plaintext
    records = await wait_journal(server, has_tag("session.closed"))
    closed = next(r for r in records if r.tag == "session.closed").payload
    assert closed["reason"] == "tls handshake failed"


async def test_submission_requires_starttls_before_mail(start_server: Any, config: Config, ca: trustme.CA) -> None:
    running = await start_server(with_listener(config, name="submission", role="submission"))

    def talk() -> tuple[int, int]:
        with smtplib.SMTP("127.0.0.1", port_of(running), timeout=10) as client:
            client.ehlo("c")
            refused, _ = client.mail("a@example.org")
            client.rset()
            client.starttls(context=client_context(ca))
            client.ehlo("c")
            accepted, _ = client.mail("a@example.org")
            return refused, accepted

    assert await trio.to_thread.run_sync(talk) == (530, 250)


async def test_submissions_speaks_tls_from_the_first_byte(start_server: Any, config: Config, ca: trustme.CA) -> None:
    running = await start_server(with_listener(config, name="submissions", role="submissions"))

    def send() -> set[str]:
        with smtplib.SMTP_SSL("127.0.0.1", port_of(running), timeout=10, context=client_context(ca)) as client:
            client.ehlo("c")
            client.sendmail("a@example.org", ["bob@localhost"], MESSAGE)
            return set(client.esmtp_features)

    features = await trio.to_thread.run_sync(send)
    assert "starttls" not in features
    await wait_delivered(running, 1)
    head = maildir_files(config, "bob")[0].read_bytes().partition(b"\r\n\r\n")[0]
    assert b"with ESMTPS id" in head and b"(using TLSv1." in head
    records = await wait_journal(running, has_tag("tls.started"))
    assert next(r for r in records if r.tag == "session.opened").payload["tls"] is True


async def test_submissions_refuses_a_plaintext_client(start_server: Any, config: Config) -> None:
    running = await start_server(with_listener(config, name="submissions", role="submissions"))

    def talk() -> bytes:
        with BlockingClient(port_of(running)) as client:
            client.send(b"EHLO c\r\n")  # not a ClientHello
            return client.read_until_closed()

    assert await trio.to_thread.run_sync(talk) == b""  # no greeting in plaintext, just closed
    records = await wait_journal(running, has_tag("session.closed"))
    assert next(r for r in records if r.tag == "session.closed").payload["reason"] == "tls handshake failed"


async def test_a_silent_client_is_dropped_after_the_handshake_timeout(start_server: Any, config: Config) -> None:
    running = await start_server(with_changes(with_listener(config, role="submissions"), tls={"handshake_timeout": 0.3}))

    def talk() -> bytes:
        with BlockingClient(port_of(running)) as client:
            return client.read_until_closed()  # we never say hello

    with trio.fail_after(5):
        assert await trio.to_thread.run_sync(talk) == b""


async def test_sni_selects_the_certificate(start_server: Any, config: Config, ca: trustme.CA, tmp_path: Path) -> None:
    certificates = (issue(ca, tmp_path, "mx.test"), issue(ca, tmp_path, "other.test"))
    running = await start_server(with_listener(config, certificates=certificates))

    def subject(name: str) -> str:
        with BlockingClient(port_of(running)) as client:
            client.replies(1)
            client.starttls(client_context(ca), server_hostname=name)  # verifies the name too
            cert = client.sock.getpeercert()  # type: ignore[attr-defined]
            return str(cert["subjectAltName"][0][1])

    assert await trio.to_thread.run_sync(subject, "other.test") == "other.test"
    assert await trio.to_thread.run_sync(subject, "mx.test") == "mx.test"
    # An unknown name gets the first (default) certificate, which then fails verification.
    with pytest.raises(ssl.SSLCertVerificationError):
        await trio.to_thread.run_sync(subject, "unknown.test")


async def test_minimum_tls_version_is_enforced(start_server: Any, config: Config, ca: trustme.CA) -> None:
    running = await start_server(with_changes(config, tls={"min_version": "TLSv1.3"}))

    def handshake(maximum: ssl.TLSVersion) -> str:
        ctx = client_context(ca)
        ctx.maximum_version = maximum
        with BlockingClient(port_of(running)) as client:
            client.replies(1)
            client.starttls(ctx)
            return client.sock.version()  # type: ignore[attr-defined,no-any-return]

    assert await trio.to_thread.run_sync(handshake, ssl.TLSVersion.TLSv1_3) == "TLSv1.3"
    with pytest.raises(ssl.SSLError):
        await trio.to_thread.run_sync(handshake, ssl.TLSVersion.TLSv1_2)


async def test_without_a_certificate_a_self_signed_one_is_generated_once(
    start_server: Any, config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    bare = with_listener(config, certificates=())
    caplog.set_level(logging.WARNING, logger="vsmtp.net.tls")
    first = await start_server(bare)
    assert "generated a self-signed certificate for mx.test" in caplog.text
    generated = Path(config.tls.directory) / "selfsigned-mx.test.pem"
    key = Path(config.tls.directory) / "selfsigned-mx.test.key"
    assert generated.exists() and key.stat().st_mode & 0o077 == 0  # the key is private
    pem = generated.read_bytes()

    def peer_certificate(running: Running) -> str:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # what an MX client does
        with BlockingClient(port_of(running)) as client:
            client.replies(1)
            client.starttls(ctx)
            der = client.sock.getpeercert(binary_form=True)  # type: ignore[attr-defined]
            return ssl.DER_cert_to_PEM_cert(der)

    assert ssl.PEM_cert_to_DER_cert(await trio.to_thread.run_sync(peer_certificate, first)) == ssl.PEM_cert_to_DER_cert(pem.decode())
    caplog.clear()
    second = await start_server(with_changes(bare, journal={"path": config.journal.path + "-2"}))  # reuses it
    assert "generated a self-signed" not in caplog.text
    assert generated.read_bytes() == pem
    assert ssl.PEM_cert_to_DER_cert(await trio.to_thread.run_sync(peer_certificate, second)) == ssl.PEM_cert_to_DER_cert(pem.decode())
