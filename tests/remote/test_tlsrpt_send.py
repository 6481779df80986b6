"""`vsmtp tlsrpt report --send`: a TLS report goes where the destination domain's
`_smtp._tls` record asks (RFC 8460 3, 5), queued as mail to its mailto: address and posted
to its https: URI (a real HTTPS server on loopback, trustme certificate, verified), and
nowhere for a domain that publishes no record."""

from __future__ import annotations

import base64
import datetime
import email
import email.policy
import functools
import gzip
import json
import socket
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme

from vsmtp.auth import dkim
from vsmtp.config import Config, DnsConfig
from vsmtp.queue import events as qe

from ..conftest import sendmail, wait_journal, with_changes
from ..daemon import run_cli
from ..dnsserver import DnsServer
from .conftest import ZONE, ca_file, server_tls
from .test_delivery import MESSAGE


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@pytest.fixture
def https_port() -> int:
    return free_port("127.0.0.12")


@pytest.fixture
def dns_server(https_port: int) -> Any:  # test.zone, and far.test asking for TLS reports
    record = f'"v=TLSRPTv1; rua=mailto:tls-reports@reports.test,https://rpt.reports.test:{https_port}/v1/tlsrpt"'
    extra = f"\n_smtp._tls.far TXT {record}\nrpt.reports A 127.0.0.12\nquiet MX 10 mx1.far\n"
    with DnsServer(ZONE.read_text() + extra, "test.") as server:
        yield server


async def test_a_report_is_mailed_and_posted_where_the_domain_asks(
    start_server: Any, sender: Config, start_sink: Any, ca: trustme.CA, https_port: int, nursery: trio.Nursery, tmp_path: Path
) -> None:
    posted: list[tuple[bytes, bytes]] = []

    async def receive(stream: trio.SSLStream[trio.SocketStream]) -> None:
        data = b""
        with trio.move_on_after(5):
            while b"\r\n\r\n" not in data and (chunk := await stream.receive_some(65536)):
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")))
            while len(body) < length and (chunk := await stream.receive_some(65536)):
                body += chunk
            posted.append((head, body))
            await stream.send_all(b"HTTP/1.0 201 Created\r\n\r\n")
        await trio.aclose_forcefully(stream)

    context = server_tls(ca, "rpt.reports.test")
    await nursery.start(functools.partial(trio.serve_ssl_over_tcp, receive, https_port, context, host="127.0.0.12"))
    await start_sink("127.0.0.2", tls=server_tls(ca, "mx1.far.test"))
    configured = with_changes(sender, delivery={"tls_ca": ca_file(ca, sender)})
    running = await start_server(configured)
    await sendmail(running, "a@example.org", ["user@far.test", "user@quiet.test"], MESSAGE)  # quiet.test asks for no report
    await wait_journal(running, lambda rs: sum(r.tag == qe.DeliverySucceeded.TAG for r in rs) >= 2, timeout=15)

    dns = configured.dns
    assert isinstance(dns, DnsConfig)
    pem, _ = dkim.generate("ed25519-sha256")
    (tmp_path / "report.key").write_bytes(pem)
    (tmp_path / "vsmtp.toml").write_text(
        f'hostname = "{configured.hostname}"\n[journal]\npath = "{configured.journal.path}"\n'
        f'[dns]\nnameservers = ["{dns.nameservers[0]}"]\ntimeout = 3\n[delivery]\ntls_ca = "{configured.delivery.tls_ca}"\n'
        f'[[dkim.sign]]\ndomain = "{configured.hostname}"\nselector = "tlsrpt"\nkey = "{tmp_path / "report.key"}"\n'
        'algorithm = "ed25519-sha256"\n'
    )
    day = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    done = await trio.to_thread.run_sync(lambda: run_cli(tmp_path, "tlsrpt", "report", "--config", "vsmtp.toml", "--day", day, "--send"))
    assert done.returncode == 0, done.stderr
    reports = {r["policies"][0]["policy"]["policy-domain"]: r for r in map(json.loads, done.stdout.splitlines())}
    assert set(reports) == {"far.test", "quiet.test"}
    rua = f"https://rpt.reports.test:{https_port}/v1/tlsrpt"
    assert sorted(done.stderr.splitlines()) == sorted([f"sent to {rua}", "sent to mailto:tls-reports@reports.test"]), done.stderr

    [(head, body)] = posted  # the https: rua, over verified TLS
    assert head.startswith(b"POST /v1/tlsrpt HTTP/1.0\r\n") and b"Content-Type: application/tlsrpt+gzip" in head
    assert json.loads(gzip.decompress(body)) == reports["far.test"]

    events = list(map(qe.decode, running.journal.read(0)))
    [report_mail] = [e for e in events if isinstance(e, qe.MessageAccepted) and e.recipients == ("tls-reports@reports.test",)]
    assert report_mail.session_id == "" and report_mail.reverse_path == f"postmaster@{configured.hostname}"
    [signed] = [e for e in events if isinstance(e, qe.MessageSigned) and e.queue_id == report_mail.queue_id]
    assert signed.method == "dkim"
    parsed = email.message_from_bytes(running.journal.blob(report_mail.blob), policy=email.policy.default)
    assert parsed["TLS-Report-Domain"] == "far.test" and parsed["TLS-Report-Submitter"] == configured.hostname
    signature = str(parsed["DKIM-Signature"])  # RFC 8460 5.3: signed by the reporting domain
    assert f"d={configured.hostname};" in signature.replace(" ", "") and "s=tlsrpt;" in signature.replace(" ", "")
    assert parsed.get_content_type() == "multipart/report" and parsed.get_param("report-type") == "tlsrpt"
    assert parsed["Subject"].startswith(f"Report Domain: far.test Submitter: {configured.hostname} Report-ID: <")
    [attachment] = [p for p in parsed.iter_attachments() if p.get_content_type() == "application/tlsrpt+gzip"]
    assert attachment.get_filename().startswith(f"{configured.hostname}!far.test!") and attachment.get_filename().endswith(".json.gz")
    assert json.loads(gzip.decompress(base64.b64decode(attachment.get_payload()))) == reports["far.test"]


def test_only_one_tlsrpt_record_counts() -> None:
    from vsmtp.net.tlsrpt import rua

    assert rua([b"v=TLSRPTv1; rua=mailto:a@example.com, https://r.example.com/x, ftp://no"]) == [
        "mailto:a@example.com",
        "https://r.example.com/x",
    ]
    assert rua([b"v=TLSRPTv1; rua=mailto:a@example.com", b"v=TLSRPTv1; rua=mailto:b@example.com"]) == []  # RFC 8460 3
    assert rua([b"v=spf1 -all"]) == []
