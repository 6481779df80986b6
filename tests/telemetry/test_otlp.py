"""Traces and metrics over OTLP, end to end: a real `vsmtp serve` (two receiving processes and
the delivery process) exports to a real OTLP endpoint on loopback (tests/otlp.py), which
decodes what arrives with the official protobuf messages. Mail goes to a local mailbox, to a
remote loopback host found through the tests' DNS server, and to a host that refuses.
"""

from __future__ import annotations

import json
import os
import re
import smtplib
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme

from vsmtp.credentials import hash_password

from ..daemon import Daemon, wait_until
from ..dnsserver import DnsServer
from ..otlp import GrpcEndpoint, HttpEndpoint, Received, Span, ancestors, wait_for
from ..smtpsink import Sink

ZONE = Path(__file__).parents[1] / "remote" / "test.zone"  # far.test: 127.0.0.2; flat.test: 127.0.0.4
TRUSTED = "127.0.0.9"  # the one address in relay.networks
USER, PASSWORD = "app", "correct horse battery staple"
APP_TRACE, APP_SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"

CONFIG = """
hostname = "mx.test"
workers = 2
rules = "rules.py"
[[listeners]]
addresses = ["127.0.0.1:0"]
[auth]
passwords = "passwords"
[relay]
networks = ["{trusted}/32"]
[dns]
nameservers = ["127.0.0.1:{dns}"]
timeout = 2.0
[delivery]
remote_port = {port}
retry_first = 600.0
[telemetry]
exporter = "otlp"
metric_interval = 0.5
[telemetry.otlp]
protocol = "{protocol}"
endpoint = "{endpoint}"
"""

RULES = """
from vsmtp.rules import rule


@rule.rcpt
def every_recipient(ctx):
    return None


@rule.data
def every_message(ctx):
    return None
"""

# The SDK's batch span processor waits 5 s by default before an export: a test need not.
FAST = {"OTEL_BSP_SCHEDULE_DELAY": "100"}


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    with DnsServer.from_file(ZONE, "test.") as server:
        yield server


async def free_port(host: str) -> int:
    listeners = await trio.open_tcp_listeners(0, host=host)
    number: int = listeners[0].socket.getsockname()[1]
    await listeners[0].aclose()
    return number


def daemon_for(
    tmp_path: Path, endpoint: str, protocol: str, dns: int, port: int, *, env: dict[str, str] | None = None, telemetry: str = ""
) -> Daemon:
    (tmp_path / "rules.py").write_text(RULES)
    (tmp_path / "passwords").write_text(f"{USER}:{hash_password(PASSWORD)}\n")
    text = CONFIG.format(trusted=TRUSTED, dns=dns, port=port, protocol=protocol, endpoint=endpoint)
    text = text.replace("[telemetry]\n", f"[telemetry]\n{telemetry}", 1)
    return Daemon(tmp_path, text, env={**FAST, **(env or {})})


def send(port: int, message: str, recipients: list[str], *, source: str = "127.0.0.1", login: bool = False) -> str:
    """One message; the queue id from the 250."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30, source_address=(source, 0)) as client:
        client.ehlo("client.test")
        if login:
            client.starttls(context=ssl._create_unverified_context())  # the server's generated certificate
            client.ehlo("client.test")
            client.login(USER, PASSWORD)
        client.mail("sender@client.test")
        for recipient in recipients:
            assert client.rcpt(recipient)[0] == 250
        code, text = client.data(message.encode())
        assert code == 250, text
    found = re.search(rb"queued as (\S+)", text)
    assert found
    return found.group(1).decode()


def only(spans: list[Span], **attributes: Any) -> Span:
    found = [s for s in spans if all(s.attributes.get(k) == v for k, v in attributes.items())]
    assert len(found) == 1, (attributes, [(s.name, s.attributes) for s in spans])
    return found[0]


def children(received: Received, parent: Span) -> list[Span]:
    with received.lock:
        return [s for s in received.spans if s.parent_id == parent.span_id and s.trace_id == parent.trace_id]


async def test_spans_and_metrics_over_otlp_grpc(tmp_path: Path, dns_server: DnsServer, ca: trustme.CA, nursery: trio.Nursery) -> None:
    port = await free_port("127.0.0.2")
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("mx1.far.test").configure_cert(tls)
    sink = Sink(host="127.0.0.2", port=port, tls=tls)
    await nursery.start(sink.serve)
    with GrpcEndpoint() as otlp:
        server = daemon_for(tmp_path, otlp.endpoint, "grpc", dns_server.port, port)
        smtp_port = await trio.to_thread.run_sync(server.start)
        try:
            await trio.to_thread.run_sync(lambda: _check(server, smtp_port, otlp.received, sink))
        finally:
            server.kill()


def _check(server: Daemon, port: int, received: Received, sink: Sink) -> None:
    # A trusted client (relay.networks): a local, a remote and an unreachable recipient.
    first = send(port, "Subject: one\r\n\r\nbody\r\n", ["bob@localhost", "carol@far.test", "dave@flat.test"], source=TRUSTED)
    # An authenticated application continuing its own trace.
    traceparent = f"traceparent: 00-{APP_TRACE}-{APP_SPAN}-01\r\n"
    second = send(port, traceparent + "Subject: two\r\n\r\nsigned up\r\n", ["erin@far.test"], login=True)
    # The same header from a client we do not trust: its trace is not continued.
    third = send(port, traceparent + "Subject: three\r\n\r\nforged\r\n", ["bob@localhost"])

    def delivered() -> bool:
        exported = len(received.named("smtp.session")) >= 3 and len(received.named("smtp.message")) >= 3
        return (
            exported
            and len(sink.received) == 2
            and len(received.named("smtp.delivery")) >= 3
            and len(received.named("local.delivery")) >= 2
        )

    wait_for(delivered, f"not everything delivered and exported:\n{server.log()}")
    spans = list(received.spans)
    assert {s.resource.get("service.name") for s in spans} == {"vsmtp"}
    assert {s.resource.get("vsmtp.process") for s in spans} >= {"delivery"}
    assert all(s.resource.get("service.version") and s.resource.get("service.instance.id") for s in spans)

    # The first message: its session, its message span, and what happened inside them.
    message = only(received.named("smtp.message"), **{"vsmtp.queue_id": first})
    session = next(ancestors(spans, message))
    assert session.name == "smtp.session"
    assert session.resource["vsmtp.process"].startswith("receiver-")
    assert session.kind == 2  # SERVER
    assert session.attributes["client.address"] == TRUSTED
    assert session.attributes["server.address"] == "127.0.0.1" and session.attributes["server.port"] == port
    assert session.attributes["network.transport"] == "tcp" and session.attributes["network.type"] == "ipv4"
    verbs = [name for name, _ in session.events]
    assert verbs[:3] == ["EHLO", "MAIL", "RCPT"] and "DATA_END" in verbs and verbs[-1] == "QUIT"
    assert dict(session.events)["DATA_END"]["smtp.reply.code"] == 250
    in_session = [s for s in spans if s.trace_id == session.trace_id]
    assert len({s.trace_id for s in in_session}) == 1
    rcpt_hooks = [s for s in in_session if s.name == "hook rules:every_recipient"]
    assert len(rcpt_hooks) == 3 and all(s.parent_id == session.span_id for s in rcpt_hooks)
    under_message = {s.name for s in children(received, message)}
    assert {"journal.commit", "hook rules:every_message"} <= under_message
    assert message.attributes["vsmtp.recipients"] == 3 and message.attributes["vsmtp.size"] > 0
    assert message.attributes["vsmtp.verdict"] == "accepted"

    # Delivery: new traces, linked to the message's span.
    link = (message.trace_id, message.span_id)
    far = only(received.named("smtp.delivery"), **{"vsmtp.queue_id": first, "vsmtp.domain": "far.test"})
    assert far.links == [link] and far.trace_id != message.trace_id and far.kind == 3  # CLIENT
    assert far.status != 2 and far.attributes["vsmtp.statuses"] == ["delivered"]
    assert far.attributes["server.address"] == "mx1.far.test" and far.attributes["vsmtp.tls"] is True
    steps = {s.name: s for s in children(received, far)}
    assert {"mx lookup", "connect", "tls handshake", "smtp transaction"} <= set(steps)
    assert steps["tls handshake"].attributes["tls.protocol.version"] in ("1.2", "1.3")
    lookups = [s for s in children(received, steps["mx lookup"]) if s.name.startswith("dns ")]
    assert {s.attributes["dns.question.type"] for s in lookups} >= {"MX", "A"}
    assert any(s.attributes["dns.question.name"] == "far.test" for s in lookups)
    flat = only(received.named("smtp.delivery"), **{"vsmtp.queue_id": first, "vsmtp.domain": "flat.test"})
    assert flat.status == 2 and flat.attributes["error.type"] == "deferred"  # ERROR: the host refused
    assert flat.links == [link]
    local = only(received.named("local.delivery"), **{"vsmtp.queue_id": first})
    assert local.links == [link] and local.status != 2

    # The application's trace continues into its mail: message and delivery spans are in it.
    continued = only(received.named("smtp.message"), **{"vsmtp.queue_id": second})
    assert continued.trace_id == APP_TRACE and continued.parent_id == APP_SPAN
    assert len(continued.links) == 1 and continued.links[0][0] != APP_TRACE  # to its session
    delivery = only(received.named("smtp.delivery"), **{"vsmtp.queue_id": second})
    assert delivery.trace_id == APP_TRACE and delivery.parent_id == continued.span_id
    assert delivery.links == []
    # Not from a client we do not trust.
    refused = only(received.named("smtp.message"), **{"vsmtp.queue_id": third})
    assert refused.trace_id != APP_TRACE and refused.parent_id != APP_SPAN
    # Its sender was checked (SPF at MAIL: a child of its session, with its DNS lookup).
    [spf] = [s for s in received.named("check spf") if s.trace_id == refused.trace_id]
    assert spf.parent_id == refused.parent_id and spf.attributes["vsmtp.stage"] == "mail"
    assert spf.attributes["vsmtp.result"] == "none"  # client.test publishes no SPF record
    assert any(s.name == "dns TXT" and s.attributes["dns.question.name"].startswith("client.test") for s in children(received, spf))
    assert not [s for s in received.named("check spf") if s.trace_id == session.trace_id]  # a relay client is not checked

    # Metrics, from every process, service.name vsmtp on each.
    def counted() -> bool:
        return sum(p.value for p in received.latest("vsmtp.messages.accepted")) == 3

    wait_for(counted, "vsmtp.messages.accepted never reached 3")
    assert {p.resource["service.name"] for p in received.points} == {"vsmtp"}
    assert {p.resource["vsmtp.process"] for p in received.latest("vsmtp.messages.accepted")} <= {"receiver-1", "receiver-2"}

    def attempts() -> dict[tuple[str, str], float]:
        points = received.latest("vsmtp.delivery.attempts")
        return {(p.attributes["vsmtp.transport"], p.attributes["vsmtp.outcome"]): p.value for p in points}

    expected = {("smtp", "delivered"): 2, ("smtp", "deferred"): 1, ("maildir", "delivered"): 2}
    wait_for(lambda: attempts() == expected, f"delivery attempts: {attempts()}")
    [commit] = received.latest("vsmtp.journal.commit.duration")[:1]
    assert commit.kind == "histogram" and commit.bounds[0] == 0.0001 and commit.bounds[-1] == 5.0  # seconds, not the ms default

    def queue() -> dict[str, float]:
        return {p.attributes["vsmtp.state"]: p.value for p in received.latest("vsmtp.queue.messages")}

    wait_for(lambda: queue().get("deferred") == 1 and queue().get("active") == 0, f"the queue gauges: {queue()}")  # dave's message


async def test_spans_over_otlp_http(tmp_path: Path, dns_server: DnsServer) -> None:
    with HttpEndpoint() as otlp:
        server = daemon_for(tmp_path, otlp.endpoint, "http/protobuf", dns_server.port, 1, telemetry='logs = true\nlog_format = "json"\n')
        port = await trio.to_thread.run_sync(server.start)
        try:
            queue_id = await trio.to_thread.run_sync(lambda: send(port, "Subject: http\r\n\r\nx\r\n", ["bob@localhost"]))

            def arrived() -> bool:
                logged = any(queue_id in body and "from=<" in body for body, *_ in otlp.received.logs)
                return bool(otlp.received.named("local.delivery") and otlp.received.named("smtp.message") and logged)

            await trio.to_thread.run_sync(lambda: wait_for(arrived, f"nothing over HTTP:\n{server.log()}"))
        finally:
            server.kill()
    message = only(otlp.received.named("smtp.message"), **{"vsmtp.queue_id": queue_id})
    assert message.resource["service.name"] == "vsmtp"
    assert otlp.received.named("local.delivery")[0].links == [(message.trace_id, message.span_id)]
    # The log record of the message, exported with its trace; and the JSON line of it on stderr.
    [(_, resource, trace_id, span_id)] = [r for r in otlp.received.logs if queue_id in r[0] and "from=<" in r[0]]
    assert resource["service.name"] == "vsmtp" and (trace_id, span_id) == (message.trace_id, message.span_id)
    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{") and queue_id in line and "from=<" in line]
    assert lines and lines[0]["trace_id"] == message.trace_id and lines[0]["process"].startswith("receiver-")


def test_a_collector_that_is_down_stops_no_mail(tmp_path: Path) -> None:
    """The endpoint's port is closed: every message is accepted and delivered all the same,
    and the failure is logged once, not once per export."""
    server = daemon_for(tmp_path, "http://127.0.0.1:1", "grpc", 1, 1, env={"OTEL_EXPORTER_OTLP_TIMEOUT": "1"})
    port = server.start()
    try:
        for n in range(20):
            send(port, f"Subject: {n}\r\n\r\nx\r\n", ["bob@localhost"], source=TRUSTED)
        mail = tmp_path / "var" / "mail" / "bob" / "Maildir" / "new"
        wait_until(lambda: mail.is_dir() and len(os.listdir(mail)) == 20, lambda: f"not delivered:\n{server.log()}")
        wait_until(lambda: "cannot export" in server.log(), lambda: f"no word of the failing exports:\n{server.log()}", timeout=30)
    finally:
        server.kill()
    lines = [line for line in server.log().splitlines() if "cannot export" in line]
    assert 1 <= len(lines) <= 3, lines  # at most once a minute from each of the three processes
