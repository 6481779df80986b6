"""MTA-STS (RFC 8461) end to end: the policy of sts.test announced in the test DNS zone and
served over HTTPS (a trustme certificate for mta-sts.sts.test) on loopback; its MX host is
a receiving server with a certificate of its own. enforce: only a matching MX host, only
over verified TLS; testing: delivered anyway; a policy in hand survives a restart."""

from __future__ import annotations

import datetime
import functools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme

from vsmtp.config import Config
from vsmtp.daemon import serve
from vsmtp.net import mtasts
from vsmtp.queue import events as qe

from ..conftest import sendmail, wait_journal, with_changes
from ..daemon import run_cli
from .conftest import ca_file, server_tls
from .test_delivery import MESSAGE

POLICY = "version: STSv1\r\nmode: {mode}\r\nmx: {mx}\r\nmax_age: 86400\r\n"


@pytest.fixture
def start_policy(nursery: trio.Nursery, ca: trustme.CA) -> Callable[..., Any]:
    """await start_policy(mode, mx) -> the port of an HTTPS server giving that policy, and what it was asked."""

    async def start(mode: str, mx: str) -> tuple[int, list[bytes]]:
        asked: list[bytes] = []
        body = POLICY.format(mode=mode, mx=mx).encode()

        async def answer(stream: trio.SSLStream[trio.SocketStream]) -> None:
            request = b""
            with trio.move_on_after(5):
                while b"\r\n\r\n" not in request and (data := await stream.receive_some(4096)):
                    request += data
                asked.append(request.split(b"\r\n", 1)[0])
                await stream.send_all(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n" + body)
            await trio.aclose_forcefully(stream)

        context = server_tls(ca, "mta-sts.sts.test")
        listeners = await nursery.start(functools.partial(trio.serve_ssl_over_tcp, answer, 0, context, host="127.0.0.11"))
        return listeners[0].transport_listener.socket.getsockname()[1], asked

    return start


def sts_config(sender: Config, ca: trustme.CA, port: int) -> Config:
    return with_changes(sender, delivery={"tls_ca": ca_file(ca, sender), "mta_sts_port": port, "retry_first": 60.0, "retry_max": 60.0})


async def outcome(running: Any) -> qe.DeliverySucceeded | qe.DeliveryDeferred:
    tags = (qe.DeliverySucceeded.TAG, qe.DeliveryDeferred.TAG)
    records = await wait_journal(running, lambda rs: any(r.tag in tags for r in rs), timeout=15)
    found = next(e for e in map(qe.decode, records) if isinstance(e, qe.DeliverySucceeded | qe.DeliveryDeferred))
    return found


async def test_enforce_delivers_to_a_matching_host_over_verified_tls(
    start_server: Any, sender: Config, start_sink: Any, start_policy: Any, ca: trustme.CA
) -> None:
    port, asked = await start_policy("enforce", "mx1.sts.test")
    sink = await start_sink("127.0.0.2", tls=server_tls(ca, "mx1.sts.test"))
    running = await start_server(sts_config(sender, ca, port))
    await sendmail(running, "a@example.org", ["user@sts.test"], MESSAGE)
    assert isinstance(await outcome(running), qe.DeliverySucceeded)
    assert [m.tls for m in sink.received] == [True] and asked == [b"GET /.well-known/mta-sts.txt HTTP/1.0"]
    [kept] = json.loads((Path(sender.journal.path) / "mta-sts.json").read_text())
    assert (kept["domain"], kept["mode"], kept["mx"], kept["id"]) == ("sts.test", "enforce", ["mx1.sts.test"], "20261202")


async def test_enforce_with_a_bad_certificate_defers_and_testing_delivers(
    start_server: Any, sender: Config, start_sink: Any, start_policy: Any, ca: trustme.CA
) -> None:
    sink = await start_sink("127.0.0.2", tls=server_tls(ca, "someone-else.test"))
    port, _ = await start_policy("enforce", "mx1.sts.test")
    running = await start_server(sts_config(sender, ca, port))
    await sendmail(running, "a@example.org", ["user@sts.test"], MESSAGE)
    deferred = await outcome(running)
    assert isinstance(deferred, qe.DeliveryDeferred) and "does not name mx1.sts.test (level verify, MTA-STS)" in deferred.reason
    running.cancel_scope.cancel()
    port, _ = await start_policy("testing", "mx1.sts.test")
    testing = with_changes(sts_config(sender, ca, port), journal={"path": sender.journal.path + "-testing"})
    running = await start_server(testing)
    await sendmail(running, "a@example.org", ["user@sts.test"], MESSAGE)
    assert isinstance(await outcome(running), qe.DeliverySucceeded)  # testing: reported (later), not enforced
    assert len(sink.received) == 1
    [attempt] = [e for e in map(qe.decode, running.journal.read(0)) if isinstance(e, qe.DeliveryAttempted)]
    assert (attempt.policy, attempt.tls_result) == ("sts", "certificate-host-mismatch")  # what enforce would have refused


async def test_testing_mode_reports_an_untrusted_chain_and_delivers(
    start_server: Any, sender: Config, start_sink: Any, start_policy: Any, ca: trustme.CA
) -> None:
    sink = await start_sink("127.0.0.2", tls=server_tls(trustme.CA(), "mx1.sts.test"))  # the right name, from a CA nobody trusts
    port, _ = await start_policy("testing", "mx1.sts.test")
    running = await start_server(sts_config(sender, ca, port))
    await sendmail(running, "a@example.org", ["user@sts.test"], MESSAGE)
    assert isinstance(await outcome(running), qe.DeliverySucceeded)
    assert [m.tls for m in sink.received] == [True] and sink.sessions == 2  # checked, refused; then again, unchecked
    [attempt] = [e for e in map(qe.decode, running.journal.read(0)) if isinstance(e, qe.DeliveryAttempted)]
    assert (attempt.policy, attempt.tls_result) == ("sts", "certificate-not-trusted")


async def test_a_policy_in_hand_survives_a_restart(
    start_server: Any, sender: Config, start_sink: Any, start_policy: Any, ca: trustme.CA
) -> None:
    await start_sink("127.0.0.2", tls=server_tls(ca, "mx1.sts.test"))
    port, asked = await start_policy("enforce", "mail.elsewhere.test")  # names another MX host
    async with trio.open_nursery() as first:  # left once that server has stopped and closed its journal
        running = await first.start(functools.partial(serve, sts_config(sender, ca, port)))
        await sendmail(running, "a@example.org", ["user@sts.test"], MESSAGE)
        deferred = await outcome(running)
        assert isinstance(deferred, qe.DeliveryDeferred) and "no MX host of sts.test matches its policy" in deferred.reason
        running.cancel_scope.cancel()
    # Restarted with the policy server gone (a port nobody listens on): the kept policy holds.
    restarted = with_changes(sts_config(sender, ca, port), delivery={"mta_sts_port": 9})
    running = await start_server(restarted)
    await sendmail(running, "a@example.org", ["user2@sts.test"], MESSAGE)
    records = await wait_journal(running, lambda rs: sum(r.tag == qe.DeliveryDeferred.TAG for r in rs) >= 2, timeout=15)
    again = [e for e in map(qe.decode, records) if isinstance(e, qe.DeliveryDeferred)][-1]
    assert again.recipient == "user2@sts.test" and "matches its policy" in again.reason
    assert len(asked) == 1


async def test_a_policy_that_cannot_be_fetched_is_reported_and_the_mail_goes(
    start_server: Any, sender: Config, start_sink: Any, ca: trustme.CA
) -> None:
    sink = await start_sink("127.0.0.2", tls=server_tls(ca, "mx1.sts.test"))
    running = await start_server(sts_config(sender, ca, 9))  # announced, but nobody serves it: none in hand
    await sendmail(running, "a@example.org", ["user@sts.test"], MESSAGE)
    assert isinstance(await outcome(running), qe.DeliverySucceeded)
    assert len(sink.received) == 1
    attempts = [e for e in map(qe.decode, running.journal.read(0)) if isinstance(e, qe.DeliveryAttempted)]
    assert sorted((a.host, a.policy, a.tls_result) for a in attempts) == [
        ("mta-sts.sts.test", "sts", "sts-policy-fetch-error"),
        ("mx1.sts.test", "no-policy-found", "success"),
    ]


def test_policy_files_and_records_read_as_rfc_8461_says() -> None:
    assert mtasts.txt_id([b"v=STSv1; id=20160831085700Z;"]) == "20160831085700Z"
    assert mtasts.txt_id([b"v=STSv1; id=a", b"v=STSv1; id=b"]) is None  # two: none (RFC 8461 3.1)
    assert mtasts.txt_id([b"v=spf1 -all"]) is None and mtasts.txt_id([b"v=STSv1;"]) is None
    policy = mtasts.parse(
        "example.com", "version: STSv1\nmode: enforce\nmx: mail.example.com\nmx: *.example.net\nmax_age: 604800\n", policy_id="1", now=0.0
    )
    assert policy.allows("mail.example.com") and policy.allows("mx.example.net") and not policy.allows("a.b.example.net")
    assert not policy.allows("example.net") and policy.stale(302400.0) and not policy.expired(302400.0) and policy.expired(604800.0)
    for bad in ("version: STSv2\nmode: enforce\nmx: a\nmax_age: 1\n", "version: STSv1\nmode: strict\nmx: a\nmax_age: 1\n",
                "version: STSv1\nmode: enforce\nmax_age: 1\n", "version: STSv1\nmode: enforce\nmx: a\nmax_age: soon\n"):  # fmt: skip
        with pytest.raises(mtasts.PolicyError):
            mtasts.parse("example.com", bad, policy_id="1", now=time.time())


async def test_a_tls_report_counts_the_sessions_made(
    start_server: Any, sender: Config, start_sink: Any, start_policy: Any, ca: trustme.CA, tmp_path: Path
) -> None:
    await start_sink("127.0.0.2", tls=server_tls(ca, "someone-else.test"))  # mx1.sts.test and mx1.far.test both
    port, _ = await start_policy("enforce", "mx1.sts.test")
    configured = sts_config(sender, ca, port)
    running = await start_server(configured)
    await sendmail(running, "a@example.org", ["user@sts.test"], MESSAGE)  # enforce: the name does not match
    await sendmail(running, "a@example.org", ["user@far.test"], MESSAGE)  # no policy: may, delivered over TLS
    await wait_journal(running, lambda rs: sum(r.tag in (qe.DeliveryDeferred.TAG, qe.DeliverySucceeded.TAG) for r in rs) >= 2, timeout=15)
    (tmp_path / "vsmtp.toml").write_text(f'hostname = "{configured.hostname}"\n[journal]\npath = "{configured.journal.path}"\n')
    day = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    done = await trio.to_thread.run_sync(lambda: run_cli(tmp_path, "tlsrpt", "report", "--config", "vsmtp.toml", "--day", day))
    assert done.returncode == 0, done.stderr
    reports = {r["policies"][0]["policy"]["policy-domain"]: r for r in map(json.loads, done.stdout.splitlines())}
    sts = reports["sts.test"]
    assert sts["organization-name"] == "mx.test" and sts["date-range"]["start-datetime"] == f"{day}T00:00:00Z"
    assert sts["contact-info"] == "postmaster@mx.test" and sts["report-id"]
    [policy] = sts["policies"]
    assert policy["policy"]["policy-type"] == "sts" and policy["policy"]["mx-host"] == ["mx1.sts.test"]
    assert "mode: enforce" in policy["policy"]["policy-string"]
    assert policy["summary"] == {"total-successful-session-count": 0, "total-failure-session-count": 1}
    assert policy["failure-details"] == [
        {
            "result-type": "certificate-host-mismatch",
            "receiving-mx-hostname": "mx1.sts.test",
            "receiving-ip": "127.0.0.2",
            "failed-session-count": 1,
        }
    ]
    [plain] = reports["far.test"]["policies"]
    assert plain["policy"]["policy-type"] == "no-policy-found"
    assert plain["summary"] == {"total-successful-session-count": 1, "total-failure-session-count": 0}
