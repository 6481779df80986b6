"""Shared fixtures: a configuration under tmp_path, and a running server in the test's nursery."""

from __future__ import annotations

import dataclasses
import smtplib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.lowlevel
import trustme

from vsmtp.config import (
    CertificateConfig,
    Config,
    DeliveryConfig,
    DmarcConfig,
    DnsConfig,
    JournalConfig,
    ListenerConfig,
    RelayConfig,
    SpfConfig,
    TlsConfig,
)
from vsmtp.daemon import Running, serve


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def certificate(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> CertificateConfig:
    """A certificate for mx.test (and localhost, 127.0.0.1), signed by the test CA."""
    directory = tmp_path_factory.mktemp("tls")
    cert = ca.issue_cert("mx.test", "localhost", "127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(directory / "cert.pem"))
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(str(directory / "cert.pem"), append=True)
    cert.private_key_pem.write_to_path(str(directory / "key.pem"))
    return CertificateConfig(certificate=str(directory / "cert.pem"), key=str(directory / "key.pem"))


# Loopback only: no test may ask the Internet's DNS. Port 1 answers nothing (ICMP unreachable),
# so a lookup fails at once and remote mail is deferred. Remote delivery tests start their own
# DNS server on loopback (tests/dnsserver.py).
NO_DNS = DnsConfig(nameservers=("127.0.0.1:1",), timeout=2.0)


@pytest.fixture
def config(tmp_path: Path, certificate: CertificateConfig) -> Config:
    """The embedded defaults, on an ephemeral loopback port, with all state under tmp_path.

    Nobody may relay (so relay refusal is what tests see), and the listener has a
    certificate from the test CA (so no self-signed one is generated for every test). SPF
    and DMARC, which would ask the DNS about every stranger's message (and wait for NO_DNS
    to time out), are off: tests/auth turns them on against a zone of its own.
    """
    return Config(
        hostname="mx.test",
        listeners=(ListenerConfig(addresses=("127.0.0.1:0",), certificates=(certificate,)),),
        journal=JournalConfig(path=str(tmp_path / "journal")),
        delivery=DeliveryConfig(maildir=str(tmp_path / "mail" / "{user}" / "Maildir"), workers=4),
        relay=RelayConfig(networks=()),
        tls=TlsConfig(directory=str(tmp_path / "tls")),
        dns=NO_DNS,
        spf=SpfConfig(mode="off"),
        dmarc=DmarcConfig(mode="off"),
    )


def with_changes(config: Config, **changes: Any) -> Config:
    """`config` with nested changes: with_changes(c, delivery={"enabled": False})."""
    values = {}
    for key, value in changes.items():
        current = getattr(config, key)
        values[key] = dataclasses.replace(current, **value) if isinstance(value, dict) else value
    return dataclasses.replace(config, **values)


@pytest.fixture
def start_server(nursery: trio.Nursery) -> Callable[..., Any]:
    """await start_server(config) -> Running; stopped when the test ends."""

    async def start(config: Config, **kwargs: Any) -> Running:
        running: Running = await nursery.start(lambda task_status: serve(config, task_status=task_status, **kwargs))
        return running

    return start


@pytest.fixture
async def server(start_server: Callable[..., Any], config: Config) -> AsyncIterator[Running]:
    running = await start_server(config)
    yield running
    running.cancel_scope.cancel()


def port_of(running: Running) -> int:
    return running.bound[0].port


def smtp_client(running: Running) -> smtplib.SMTP:
    return smtplib.SMTP("127.0.0.1", port_of(running), timeout=10)


async def sendmail(running: Running, sender: str, recipients: list[str], message: bytes | str) -> dict[str, Any]:
    """Send one message with smtplib (in a thread) and QUIT; returns sendmail's refusals."""

    def send() -> dict[str, Any]:
        with smtp_client(running) as client:
            return client.sendmail(sender, recipients, message)

    return await trio.to_thread.run_sync(send)


async def wait_delivered(running: Running, count: int, *, timeout: float = 10) -> None:
    """Block until `count` messages have completed (every recipient final)."""
    with trio.fail_after(timeout):
        while running.projection.state.completed < count:
            await running.projection.wait_touched(timeout=0.05)
            await trio.lowlevel.checkpoint()


async def wait_journal(running: Running, predicate: Callable[[list[Any]], bool], *, timeout: float = 10) -> list[Any]:
    """Block until predicate(all records) holds; wakes on each commit, never polls blindly."""
    with trio.fail_after(timeout):
        while True:
            records = list(running.journal.read(0))
            if predicate(records):
                return records
            await running.writer.wait_committed(records[-1].position if records else 0)


def maildir_files(config: Config, user: str) -> list[Path]:
    """The files delivered to `user`@localhost, in name order."""
    new = Path(config.delivery.maildir.format(user=user, domain="localhost")) / "new"
    return sorted(new.iterdir()) if new.exists() else []


def has_tag(tag: str, count: int = 1) -> Callable[[list[Any]], bool]:
    return lambda records: sum(r.tag == tag for r in records) >= count
