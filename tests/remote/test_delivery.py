"""Remote delivery end to end: vsmtp takes a message over SMTP, finds the domain's mail hosts
on a DNS server on loopback, and delivers to receiving SMTP servers on loopback."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trustme

from vsmtp.config import Config, RelayhostConfig
from vsmtp.daemon import Running

from ..conftest import sendmail, with_changes
from .conftest import ca_file, server_tls


async def outcomes(running: Running, queue_id_count: int = 1, *, timeout: float = 15) -> list[Any]:
    """delivery.* records, once `queue_id_count` messages are complete."""
    with trio.fail_after(timeout):
        while running.projection.state.completed < queue_id_count:
            await running.projection.wait_touched(timeout=0.05)
    return [r for r in running.journal.read(0) if r.tag in ("delivery.succeeded", "delivery.deferred", "delivery.failed")]


MESSAGE = "Subject: far away\r\n\r\n.a line that starts with a dot\r\nbye\r\n"


async def test_the_lowest_preference_mx_gets_the_message(start_server: Any, sender: Config, start_sink: Any) -> None:
    first, second = await start_sink("127.0.0.2"), await start_sink("127.0.0.3")
    running = await start_server(sender)
    await sendmail(running, "a@example.org", ["user@far.test", "other@far.test"], MESSAGE)
    records = await outcomes(running)
    assert [r.tag for r in records] == ["delivery.succeeded", "delivery.succeeded"]
    assert "mx1.far.test[127.0.0.2]" in records[0].payload["detail"]
    [got] = first.received  # both recipients in one transaction
    assert got.recipients == ["user@far.test", "other@far.test"] and got.reverse_path == "a@example.org"
    assert got.data.endswith(b"Subject: far away\r\n\r\n.a line that starts with a dot\r\nbye\r\n")  # dot-stuffing undone
    assert got.data.startswith(b"Received: from ")
    assert second.received == [] and second.sessions == 0
    running.cancel_scope.cancel()


async def test_the_next_mx_when_the_first_refuses_connections(start_server: Any, sender: Config, start_sink: Any) -> None:
    second = await start_sink("127.0.0.3")  # nothing listens on mx1's 127.0.0.2
    running = await start_server(sender)
    await sendmail(running, "a@example.org", ["user@far.test"], MESSAGE)
    [record] = await outcomes(running)
    assert record.tag == "delivery.succeeded" and "mx2.far.test[127.0.0.3]" in record.payload["detail"]
    assert len(second.received) == 1
    attempts = [r.payload for r in running.journal.read(0) if r.tag == "delivery.attempted"]
    assert [(a["host"], a["address"]) for a in attempts] == [("mx1.far.test", "127.0.0.2"), ("mx2.far.test", "127.0.0.3")]
    assert "cannot connect" in attempts[0]["reply"] and attempts[1]["reply"].startswith("250")
    running.cancel_scope.cancel()


async def test_a_domain_without_mx_gets_mail_at_its_own_address(start_server: Any, sender: Config, start_sink: Any) -> None:
    sink = await start_sink("127.0.0.4")
    running = await start_server(sender)
    await sendmail(running, "a@example.org", ["user@flat.test"], MESSAGE)
    [record] = await outcomes(running)
    assert record.tag == "delivery.succeeded" and len(sink.received) == 1
    running.cancel_scope.cancel()


async def test_null_mx_fails_for_good_and_bounces(start_server: Any, sender: Config) -> None:
    import email
    import email.policy

    from ..conftest import maildir_files

    running = await start_server(sender)
    await sendmail(running, "alice@localhost", ["user@nomail.test"], MESSAGE)
    [record] = await outcomes(running)
    assert record.tag == "delivery.failed" and "null MX" in record.payload["reason"]
    with trio.fail_after(10):
        while not maildir_files(sender, "alice"):
            await trio.sleep(0.05)
    [path] = maildir_files(sender, "alice")
    dsn = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    [_, per_recipient] = dsn.get_payload()[1].get_payload()
    assert per_recipient["Status"] == "5.1.10" and per_recipient["Final-Recipient"] == "rfc822; user@nomail.test"
    running.cancel_scope.cancel()


async def test_a_bounce_is_dkim_signed_when_the_hostname_has_a_key(start_server: Any, sender: Config, tmp_path: Any) -> None:
    import email
    import email.policy

    import dkim as dkimpy

    from vsmtp.auth import dkim
    from vsmtp.config import DkimConfig, SigningKeyConfig
    from vsmtp.queue import events as qe

    from ..conftest import maildir_files

    pem, record = dkim.generate("ed25519-sha256")
    (tmp_path / "bounce.key").write_bytes(pem)
    key = SigningKeyConfig(domain=sender.hostname, selector="dsn", key=str(tmp_path / "bounce.key"), algorithm="ed25519-sha256")
    running = await start_server(with_changes(sender, dkim=DkimConfig(sign=(key,))))
    await sendmail(running, "alice@localhost", ["user@nomail.test"], MESSAGE)
    with trio.fail_after(10):
        while not maildir_files(sender, "alice"):
            await trio.sleep(0.05)
    [path] = maildir_files(sender, "alice")
    dsn = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert dsn.get_content_type() == "multipart/report"
    assert f"d={sender.hostname};" in str(dsn["DKIM-Signature"]).replace(" ", ""), dsn["DKIM-Signature"]
    assert dkimpy.verify(path.read_bytes(), dnsfunc=lambda name, timeout=5: record.encode())  # and verifies, the key published
    [bounced] = [e for e in map(qe.decode, running.journal.read(0)) if isinstance(e, qe.MessageBounced)]
    signed = [e for e in map(qe.decode, running.journal.read(0)) if isinstance(e, qe.MessageSigned)]
    assert [(e.queue_id, e.method) for e in signed] == [(bounced.bounce_id, "dkim")]
    running.cancel_scope.cancel()


async def test_4xx_is_retried_then_delivered(start_server: Any, sender: Config, start_sink: Any) -> None:
    sink = await start_sink("127.0.0.2", rcpt_replies=[b"451 4.3.0 try again later\r\n"])
    running = await start_server(sender)
    await sendmail(running, "a@example.org", ["user@far.test"], MESSAGE)
    records = await outcomes(running)
    assert [r.tag for r in records] == ["delivery.deferred", "delivery.succeeded"]
    assert "451 4.3.0 try again later" in records[0].payload["reason"]
    assert records[0].payload["retry_at"] - records[0].payload["at"] == pytest.approx(0.3, abs=0.01)
    assert len(sink.received) == 1 and sink.sessions == 1  # the retry reused the connection (RSET, then again)
    running.cancel_scope.cancel()


async def test_5xx_fails_that_recipient_only(start_server: Any, sender: Config, start_sink: Any) -> None:
    sink = await start_sink("127.0.0.2", rcpt_replies=[b"550 5.1.1 no such user\r\n"])
    running = await start_server(sender)
    await sendmail(running, "a@example.org", ["nobody@far.test", "user@far.test"], MESSAGE)
    records = await outcomes(running)
    by_recipient = {r.payload["recipient"]: r for r in records}
    assert by_recipient["nobody@far.test"].tag == "delivery.failed"
    assert "550 5.1.1 no such user" in by_recipient["nobody@far.test"].payload["reason"]
    assert by_recipient["user@far.test"].tag == "delivery.succeeded"
    assert sink.received[0].recipients == ["user@far.test"]
    running.cancel_scope.cancel()


async def test_a_slow_domain_does_not_hold_back_another(start_server: Any, sender: Config, start_sink: Any) -> None:
    slow = await start_sink("127.0.0.5", delay=0.5)  # every reply takes 0.5 s: about 3.5 s for a delivery
    quick = await start_sink("127.0.0.6")
    running = await start_server(sender)
    await sendmail(running, "a@example.org", ["user@slow.test"], MESSAGE)
    await trio.sleep(0.2)  # the slow delivery is under way
    started = trio.current_time()
    await sendmail(running, "a@example.org", ["user@quick.test"], MESSAGE)
    with trio.fail_after(5):
        while not quick.received:
            await trio.sleep(0.02)
    assert trio.current_time() - started < 1.5 and slow.received == []  # quick went first
    await outcomes(running, 2, timeout=30)
    assert len(slow.received) == 1
    running.cancel_scope.cancel()


async def test_starttls_when_offered(start_server: Any, sender: Config, start_sink: Any, ca: trustme.CA) -> None:
    context = server_tls(ca, "mx1.far.test")
    sink = await start_sink("127.0.0.2", tls=context)
    running = await start_server(sender)
    await sendmail(running, "a@example.org", ["user@far.test"], MESSAGE)
    [record] = await outcomes(running)
    assert "(TLS)" in record.payload["detail"] and sink.received[0].tls
    running.cancel_scope.cancel()


async def test_an_unreachable_domain_is_deferred_and_kept(start_server: Any, sender: Config) -> None:
    running = await start_server(with_changes(sender, delivery={"retry_first": 60.0}))  # nothing listens anywhere
    await sendmail(running, "a@example.org", ["user@far.test"], MESSAGE)
    with trio.fail_after(10):
        while not any(r.tag == "delivery.deferred" for r in running.journal.read(0)):
            await trio.sleep(0.05)
    [deferred] = [r for r in running.journal.read(0) if r.tag == "delivery.deferred"]
    assert "cannot connect" in deferred.payload["reason"]
    assert len(running.projection.state.messages) == 1  # still queued
    running.cancel_scope.cancel()


async def send_with_dsn(running: Running, sender: str, recipient: str, *, mail: list[str], rcpt: list[str]) -> None:
    import smtplib

    def send() -> None:
        with smtplib.SMTP("127.0.0.1", running.bound[0].port, timeout=10) as client:
            client.ehlo("client.test")
            assert client.mail(sender, mail)[0] == 250
            assert client.rcpt(recipient, rcpt)[0] == 250
            assert client.data("Message-ID: <orig.1@client.test>\r\nSubject: will bounce\r\n\r\nthe body\r\n")[0] == 250

    await trio.to_thread.run_sync(send)


async def test_5xx_bounces_to_the_sender_as_a_delivery_status_notification(start_server: Any, sender: Config, start_sink: Any) -> None:
    import email
    import email.policy

    from ..conftest import maildir_files

    await start_sink("127.0.0.2", rcpt_replies=[b"550 5.1.1 <nobody@far.test>: no such user\r\n"])
    running = await start_server(sender)
    await send_with_dsn(
        running,
        "alice@localhost",
        "nobody@far.test",
        mail=["RET=FULL", "ENVID=env-42"],
        rcpt=["NOTIFY=FAILURE", "ORCPT=rfc822;Nobody@far.test"],
    )
    with trio.fail_after(15):
        while not maildir_files(sender, "alice"):
            await trio.sleep(0.05)
    [path] = maildir_files(sender, "alice")
    dsn = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert dsn.get_all("Return-Path") == ["<>"]  # one, the final delivery's (the notice carries none of its own)
    assert dsn["Auto-Submitted"] == "auto-replied"
    assert dsn.get_content_type() == "multipart/report" and dsn.get_param("report-type") == "delivery-status"
    human, status, returned = dsn.get_payload()
    assert "nobody@far.test" in human.get_content()
    per_message, per_recipient = status.get_payload()
    assert per_message["Original-Envelope-Id"] == "env-42" and per_message["Reporting-MTA"] == "dns; mx.test"
    assert per_recipient["Final-Recipient"] == "rfc822; nobody@far.test"
    assert per_recipient["Original-Recipient"] == "rfc822;Nobody@far.test"
    assert per_recipient["Action"] == "failed" and per_recipient["Status"] == "5.1.1"
    assert per_recipient["Remote-MTA"] == "dns; mx1.far.test"
    assert per_recipient["Diagnostic-Code"].startswith("smtp; 550 5.1.1")
    assert returned.get_content_type() == "message/rfc822"  # RET=FULL: the whole message
    assert b"the body" in returned.as_bytes()
    records = [r for r in running.journal.read(0) if r.tag == "message.bounced"]
    assert len(records) == 1 and records[0].payload["recipients"] == ["nobody@far.test"]
    running.cancel_scope.cancel()


async def test_no_bounce_when_the_recipient_asked_for_none_nor_for_the_null_sender(
    start_server: Any, sender: Config, start_sink: Any
) -> None:
    from ..conftest import maildir_files

    await start_sink("127.0.0.2", rcpt_replies=[b"550 5.1.1 no\r\n", b"550 5.1.1 no\r\n"])
    running = await start_server(sender)
    await send_with_dsn(running, "alice@localhost", "nobody@far.test", mail=[], rcpt=["NOTIFY=NEVER"])
    await send_with_dsn(running, "", "nobody@far.test", mail=[], rcpt=[])
    with trio.fail_after(15):
        while (
            not any(r.tag == "message.bounced" for r in running.journal.read(0))
            or len([r for r in running.journal.read(0) if r.tag == "delivery.failed"]) < 2
        ):
            await trio.sleep(0.05)
    [bounced] = [r for r in running.journal.read(0) if r.tag == "message.bounced"]
    assert bounced.payload["bounce_id"] == ""  # NOTIFY=NEVER: settled without a bounce
    await running.projection.wait_position(running.journal.last_position())  # the projection has it too
    [kept] = running.projection.state.messages.values()  # the null sender's failure: kept, held, not bounced
    assert kept.reverse_path == "" and kept.held
    assert maildir_files(sender, "alice") == []
    running.cancel_scope.cancel()


async def test_connections_to_one_domain_are_limited(start_server: Any, sender: Config, start_sink: Any) -> None:
    sink = await start_sink("127.0.0.2", delay=0.05)
    running = await start_server(with_changes(sender, delivery={"per_domain": 1}))
    for n in range(4):
        await sendmail(running, "a@example.org", [f"user{n}@far.test"], MESSAGE)
    await outcomes(running, 4)
    assert len(sink.received) == 4 and sink.most_active == 1
    running.cancel_scope.cancel()


async def test_connections_to_one_host_are_limited_across_domains(start_server: Any, sender: Config, start_sink: Any) -> None:
    sink = await start_sink("127.0.0.2", delay=0.05)
    running = await start_server(with_changes(sender, delivery={"per_host": 1, "connection_idle": 0}))
    for n in range(4):
        await sendmail(running, "a@example.org", [f"user{n}@{('one', 'two')[n % 2]}.test"], MESSAGE)
    await outcomes(running, 4)
    assert len(sink.received) == 4 and sink.most_active == 1
    running.cancel_scope.cancel()


async def test_relay_through_a_smarthost_with_auth_over_starttls(
    start_server: Any, sender: Config, start_sink: Any, port: int, ca: trustme.CA
) -> None:
    context = server_tls(ca, "127.0.0.8")  # verified: the test CA is trusted, the certificate names the relay host
    smarthost = await start_sink("127.0.0.8", tls=context, auth=("relayuser", "s3cret"))
    relay = RelayhostConfig(url=f"smtp://127.0.0.8:{port}", username="relayuser", password="s3cret", ca=ca_file(ca, sender))
    running = await start_server(with_changes(sender, relayhost=relay))
    await sendmail(running, "a@example.org", ["someone@far.test", "other@flat.test"], MESSAGE)  # two domains, no MX asked
    records = await outcomes(running)
    assert [r.tag for r in records] == ["delivery.succeeded", "delivery.succeeded"]
    assert all("127.0.0.8" in r.payload["detail"] and "(TLS)" in r.payload["detail"] for r in records)
    assert {tuple(m.recipients) for m in smarthost.received} == {("someone@far.test",), ("other@flat.test",)}
    assert all(m.tls and m.user == "relayuser" for m in smarthost.received)
    running.cancel_scope.cancel()


async def test_a_smarthost_that_refuses_the_credentials_or_lacks_tls_gets_nothing(
    start_server: Any, sender: Config, start_sink: Any, port: int, ca: trustme.CA
) -> None:
    context = server_tls(ca, "127.0.0.8")
    with_tls = await start_sink("127.0.0.8", tls=context, auth=("relayuser", "s3cret"))
    plain = await start_sink("127.0.0.9")  # no STARTTLS
    trusted = ca_file(ca, sender)
    wrong = RelayhostConfig(url=f"smtp://127.0.0.8:{port}", username="relayuser", password="wrong", ca=trusted)
    cleartext = RelayhostConfig(url=f"smtp://127.0.0.9:{port}", username="relayuser", password="s3cret", ca=trusted)
    for relay in (wrong, cleartext):
        running = await start_server(
            with_changes(sender, relayhost=relay, journal={"path": f"{sender.journal.path}-{relay.password}{relay.url[-6:]}"})
        )
        await sendmail(running, "a@example.org", ["someone@far.test"], MESSAGE)
        with trio.fail_after(10):
            while not any(r.tag == "delivery.deferred" for r in running.journal.read(0)):
                await trio.sleep(0.05)
        [deferred] = [r for r in running.journal.read(0) if r.tag == "delivery.deferred"]
        assert ("AUTH: 535" in deferred.payload["reason"]) if relay is wrong else ("TLS is required" in deferred.payload["reason"])
        [attempt] = [r for r in running.journal.read(0) if r.tag == "delivery.attempted"]
        assert attempt.payload["tls"] is (relay is wrong)  # the refusal of the credentials came after STARTTLS
        running.cancel_scope.cancel()
    assert with_tls.received == [] and plain.received == []


async def test_delivery_spans_link_to_the_receiving_session(
    start_server: Any, sender: Config, start_sink: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    import dataclasses
    import json

    from vsmtp import telemetry
    from vsmtp.config import TelemetryConfig

    from ..telemetry.test_inprocess import _json_objects

    await start_sink("127.0.0.2")
    running = await start_server(dataclasses.replace(sender, telemetry=TelemetryConfig(exporter="console")))
    out = ""
    try:
        await sendmail(running, "a@example.org", ["user@far.test", "bob@localhost"], MESSAGE)
        await outcomes(running)
        with trio.fail_after(5):
            while any(name not in out for name in (telemetry.SPAN_DELIVERY, telemetry.SPAN_SESSION, telemetry.SPAN_LOCAL)):
                await trio.sleep(0.02)
                out += capfd.readouterr().out
    finally:
        running.cancel_scope.cancel()
        telemetry.setup(TelemetryConfig())
    spans = [json.loads(chunk) for chunk in _json_objects(out)]
    [session] = [s for s in spans if s["name"] == telemetry.SPAN_SESSION]
    [delivery] = [s for s in spans if s["name"] == telemetry.SPAN_DELIVERY]
    assert delivery["attributes"]["server.address"] == "mx1.far.test" and delivery["attributes"]["vsmtp.domain"] == "far.test"
    assert [link["context"]["trace_id"] for link in delivery["links"]] == [session["context"]["trace_id"]]
    [local] = [s for s in spans if s["name"] == telemetry.SPAN_LOCAL]
    assert [link["context"]["trace_id"] for link in local["links"]] == [session["context"]["trace_id"]]
    assert local["attributes"]["vsmtp.statuses"] == ["delivered"]


async def test_a_domain_that_requires_tls_gets_nothing_in_clear(start_server: Any, sender: Config, start_sink: Any) -> None:
    sink = await start_sink("127.0.0.2")  # offers no STARTTLS
    running = await start_server(with_changes(sender, delivery={"tls_policy": {"far.test": "require"}, "retry_first": 60.0}))
    await sendmail(running, "a@example.org", ["user@far.test"], MESSAGE)
    with trio.fail_after(10):
        while not any(r.tag == "delivery.deferred" for r in running.journal.read(0)):
            await trio.sleep(0.05)
    first = next(r for r in running.journal.read(0) if r.tag == "delivery.attempted")
    assert first.payload["host"] == "mx1.far.test" and "TLS is required" in first.payload["reply"]
    assert sink.received == [] and sink.sessions == 1  # it connected, saw no STARTTLS, and left
    running.cancel_scope.cancel()


@pytest.mark.parametrize(("idle", "sessions"), [(2.0, 1), (0.0, 3)])
async def test_one_connection_carries_several_messages_to_a_host(
    start_server: Any, sender: Config, start_sink: Any, idle: float, sessions: int
) -> None:
    sink = await start_sink("127.0.0.2")
    running = await start_server(with_changes(sender, delivery={"connection_idle": idle}))
    for n in range(3):
        await sendmail(running, "a@example.org", [f"user{n}@far.test"], MESSAGE)
        await outcomes(running, n + 1)
    assert len(sink.received) == 3 and sink.sessions == sessions  # kept between messages, unless connection_idle = 0
    running.cancel_scope.cancel()


def dsn_in(config: Config, user: str, count: int = 1) -> list[Any]:
    import email
    import email.policy

    from ..conftest import maildir_files

    return [email.message_from_bytes(p.read_bytes(), policy=email.policy.default) for p in maildir_files(config, user)[:count]]


async def wait_for_files(config: Config, user: str, count: int = 1, timeout: float = 15) -> None:
    from ..conftest import maildir_files

    with trio.fail_after(timeout):
        while len(maildir_files(config, user)) < count:
            await trio.sleep(0.05)


async def test_notify_success_reports_delivered_here_and_relayed_elsewhere(start_server: Any, sender: Config, start_sink: Any) -> None:
    await start_sink("127.0.0.2")
    running = await start_server(sender)
    await send_with_dsn(running, "alice@localhost", "bob@localhost", mail=["ENVID=ok-1"], rcpt=["NOTIFY=SUCCESS"])
    await wait_for_files(sender, "alice")
    await send_with_dsn(running, "alice@localhost", "someone@far.test", mail=[], rcpt=["NOTIFY=SUCCESS,FAILURE"])
    await wait_for_files(sender, "alice", 2)
    await send_with_dsn(running, "alice@localhost", "bob@localhost", mail=[], rcpt=[])  # no NOTIFY: no success notice
    await wait_for_files(sender, "bob", 2)
    await outcomes(running, 5)  # 3 messages and 2 notices, all complete
    here, there = sorted(dsn_in(sender, "alice", 2), key=lambda m: m.as_string().count("relayed"))
    for notice, action in ((here, "delivered"), (there, "relayed")):
        assert notice["Subject"] == "Successful Mail Delivery Report" and notice.get_content_type() == "multipart/report"
        _, status, returned = notice.get_payload()
        _, per_recipient = status.get_payload()
        assert per_recipient["Action"] == action and per_recipient["Status"] == "2.0.0"
        assert returned.get_content_type() == "text/rfc822-headers"
    assert here.get_payload()[1].get_payload()[0]["Original-Envelope-Id"] == "ok-1"
    assert len(dsn_in(sender, "alice", 5)) == 2  # nothing for the third message
    assert [r.payload["bounce_id"] != "" for r in running.journal.read(0) if r.tag == "message.bounced"] == [True, True]
    running.cancel_scope.cancel()


async def test_a_delay_warning_goes_once_while_the_message_waits(start_server: Any, sender: Config) -> None:
    running = await start_server(with_changes(sender, delivery={"delay_warning": 0.5}))  # far.test's hosts are not listening
    await send_with_dsn(running, "alice@localhost", "user@far.test", mail=[], rcpt=[])
    await send_with_dsn(running, "alice@localhost", "user@far.test", mail=[], rcpt=["NOTIFY=FAILURE"])  # no DELAY asked
    await wait_for_files(sender, "alice")
    with trio.fail_after(15):  # a few more retries: still one warning each
        while sum(r.tag == "delivery.deferred" for r in running.journal.read(0)) < 8:
            await trio.sleep(0.05)
    [notice] = dsn_in(sender, "alice", 5)
    assert notice["Subject"] == "Delayed Mail (still being retried)"
    _, status, _ = notice.get_payload()
    _, per_recipient = status.get_payload()
    assert per_recipient["Action"] == "delayed" and per_recipient["Status"].startswith("4.")
    assert per_recipient["Final-Recipient"] == "rfc822; user@far.test" and per_recipient["Will-Retry-Until"]
    warned = [r.payload for r in running.journal.read(0) if r.tag == "message.delay_warned"]
    assert sorted(w["warning_id"] != "" for w in warned) == [False, True]  # one warning each, one of them empty
    assert len([m for m in running.projection.state.messages.values() if m.reverse_path]) == 2  # both still queued
    running.cancel_scope.cancel()


async def test_smtputf8_is_asked_of_the_next_host_only_when_the_message_needs_it(
    start_server: Any, sender: Config, start_sink: Any
) -> None:
    sink = await start_sink("127.0.0.2")  # offers 8BITMIME, not SMTPUTF8
    running = await start_server(sender)
    # The client asked for SMTPUTF8, but nothing in it needs it (RFC 6531 3.4): it goes.
    await send_with_dsn(running, "alice@localhost", "user@far.test", mail=["SMTPUTF8"], rcpt=[])
    await outcomes(running, 1)
    assert [r.reverse_path for r in sink.received] == ["alice@localhost"]
    # A UTF-8 address needs it: it cannot go there, and the sender hears why (5.6.7).
    await send_with_dsn(running, "alice@localhost", "usér@far.test", mail=["SMTPUTF8"], rcpt=[])
    [failed] = [r for r in await outcomes(running, 3) if r.tag == "delivery.failed"]
    assert "SMTPUTF8" in failed.payload["reason"] and failed.payload["status"] == "5.6.7" and len(sink.received) == 1
    await wait_for_files(sender, "alice")
    running.cancel_scope.cancel()


async def test_a_reload_that_changes_the_smarthost_sends_the_next_message_there(
    start_server: Any, sender: Config, start_sink: Any, port: int
) -> None:
    first, second = await start_sink("127.0.0.8"), await start_sink("127.0.0.9")
    running = await start_server(with_changes(sender, relayhost=RelayhostConfig(url=f"smtp://127.0.0.8:{port}", tls="may")))
    await sendmail(running, "a@example.org", ["someone@far.test"], MESSAGE)
    await outcomes(running, 1)
    running.reload(with_changes(sender, relayhost=RelayhostConfig(url=f"smtp://127.0.0.9:{port}", tls="may")))  # what SIGHUP does
    await sendmail(running, "a@example.org", ["someone@far.test"], MESSAGE)
    await outcomes(running, 2)
    assert len(first.received) == 1 and len(second.received) == 1
    running.cancel_scope.cancel()
