"""What the remote delivery tests share: the DNS server on loopback answering from test.zone,
the receiving SMTP servers (tests/smtpsink.py) on 127.0.0.2-9, a sending configuration
pointed at both, and the test CA's certificates for those servers."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme

from vsmtp.config import Config, DnsConfig

from ..conftest import with_changes
from ..dnsserver import DnsServer
from ..smtpsink import Sink

ZONE = Path(__file__).with_name("test.zone")


@pytest.fixture
def dns_server() -> Any:
    with DnsServer.from_file(ZONE, "test.") as server:
        yield server


MAIL_HOSTS = [f"127.0.0.{n}" for n in range(2, 10)]  # the addresses test.zone gives the mail hosts


@pytest.fixture
async def port() -> int:
    """A port free on every mail host address at once (they all listen on the one
    remote_port): one free on another address may be taken on these (50 tries at most)."""
    for _ in range(50):
        [probe] = await trio.open_tcp_listeners(0, host="127.0.0.7")
        number: int = probe.socket.getsockname()[1]
        await probe.aclose()
        held = []
        try:
            for host in MAIL_HOSTS:
                held.extend(await trio.open_tcp_listeners(number, host=host))
        except OSError:
            continue  # taken on one of them: another
        finally:
            for listener in held:
                await listener.aclose()
        return number
    raise RuntimeError("no port free on every mail host address")


@pytest.fixture
def sender(config: Config, dns_server: DnsServer, port: int) -> Config:
    return with_changes(
        config,
        relay={"networks": ("127.0.0.0/8",)},
        dns=DnsConfig(nameservers=(f"{dns_server.host}:{dns_server.port}",), timeout=3),
        delivery={"remote_port": port, "retry_first": 0.3, "retry_max": 0.6},
    )


@pytest.fixture
def start_sink(nursery: trio.Nursery, port: int) -> Callable[..., Any]:
    async def start(host: str, **kwargs: Any) -> Sink:
        sink = Sink(host=host, port=port, **kwargs)
        await nursery.start(sink.serve)
        return sink

    return start


def ca_file(ca: trustme.CA, config: Config) -> str:
    """The test CA as a PEM file (relayhost.ca, delivery.tls_ca), beside the journal."""
    path = Path(config.journal.path).parent / "test-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def server_tls(ca: trustme.CA, name: str) -> ssl.SSLContext:
    """A receiving server's TLS context, with a certificate for `name` from the test CA."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(name).configure_cert(context)
    return context
