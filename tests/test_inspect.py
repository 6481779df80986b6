"""The operator's view of a running server: trace, show, export, stats, verify, tail -f."""

from __future__ import annotations

import dataclasses
import json
import shutil
import smtplib
import subprocess
import time
from pathlib import Path

import pytest

from .daemon import VSMTP, Daemon, run_cli

CONFIG = '[[listeners]]\naddresses = ["127.0.0.1:0"]\n'
MESSAGE = "Message-ID: <hello.42@client.test>\r\nSubject: traced\r\n\r\nfollow me\r\n"


def send_and_wait(daemon: Daemon, port: int) -> str:
    """Send one message; return its queue id once its delivery is in the journal."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("client.test")
        client.mail("a@example.org")
        client.rcpt("bob@localhost")
        code, text = client.data(MESSAGE)
        assert code == 250
    queue_id = text.decode().rsplit(" ", 1)[-1]
    deadline = time.monotonic() + 20
    while "delivery.succeeded" not in (out := run_cli(daemon.workdir, "trace", queue_id)).stdout:  # bounded
        assert time.monotonic() < deadline, out.stdout + out.stderr
        time.sleep(0.1)
    return queue_id


@pytest.fixture
def running(tmp_path: Path) -> tuple[Daemon, str]:
    daemon = Daemon(tmp_path, CONFIG)
    port = daemon.start()
    queue_id = send_and_wait(daemon, port)
    yield daemon, queue_id  # type: ignore[misc]
    daemon.kill()


@pytest.mark.slow
def test_trace_by_queue_id_and_by_message_id_on_a_running_server(running: tuple[Daemon, str]) -> None:
    daemon, queue_id = running
    by_id = run_cli(daemon.workdir, "trace", queue_id)
    assert by_id.returncode == 0, by_id.stderr
    lines = by_id.stdout.splitlines()
    assert lines[0].startswith(f"message {queue_id}  Message-ID <hello.42@client.test>")
    tags = [line.split()[2] for line in lines[1:]]
    for stage in ("session.opened", "session.helo", "session.mail", "recipient.accepted", "message.accepted"):
        assert stage in tags
    assert tags.index("session.opened") < tags.index("message.accepted") < tags.index("delivery.succeeded")
    [delivered] = [line for line in lines if " delivery.succeeded " in line]
    assert "transport=maildir" in delivered and "route=maildir routed_by=mailbox" in delivered  # the route, journaled
    for form in ("<hello.42@client.test>", "hello.42@client.test"):
        by_message_id = run_cli(daemon.workdir, "trace", form)
        assert by_message_id.returncode == 0 and by_message_id.stdout.splitlines()[0] == lines[0]
    as_json = json.loads(run_cli(daemon.workdir, "trace", queue_id, "--json").stdout)
    assert as_json["queue_id"] == queue_id and as_json["events"][-1]["tag"] in ("delivery.succeeded", "session.closed")
    unknown = run_cli(daemon.workdir, "trace", "NOSUCHID")
    assert unknown.returncode == 1 and "no message 'NOSUCHID'" in unknown.stderr


@pytest.mark.slow
def test_show_export_and_stats(running: tuple[Daemon, str]) -> None:
    daemon, queue_id = running
    show = run_cli(daemon.workdir, "journal", "show", "1")
    assert show.returncode == 0 and "tag      session.opened" in show.stdout and 'peer_host: "127.0.0.1"' in show.stdout
    assert run_cli(daemon.workdir, "journal", "show", "999999").returncode == 1

    exported = [json.loads(line) for line in run_cli(daemon.workdir, "journal", "export").stdout.splitlines()]
    assert [e["position"] for e in exported] == list(range(1, len(exported) + 1))
    only = [json.loads(line) for line in run_cli(daemon.workdir, "journal", "export", "--message", queue_id).stdout.splitlines()]
    assert {e["tag"] for e in only} >= {"message.accepted", "delivery.succeeded"}
    future = run_cli(daemon.workdir, "journal", "export", "--since", "2999-01-01T00:00:00Z")
    assert future.returncode == 0 and future.stdout == ""
    bad = run_cli(daemon.workdir, "journal", "export", "--since", "yesterday")
    assert bad.returncode == 2 and "not a time" in bad.stderr

    stats = json.loads(run_cli(daemon.workdir, "journal", "stats", "--json").stdout)
    assert stats["records"] == len(exported) and stats["blobs"] == 1
    assert stats["tags"]["message.accepted"] == 1 and stats["oldest"] <= stats["newest"]


@pytest.mark.slow
def test_tail_follow_prints_new_events_as_they_come(running: tuple[Daemon, str]) -> None:
    daemon, _ = running
    follower = subprocess.Popen([VSMTP, "journal", "tail", "-n", "1", "-f"], cwd=daemon.workdir, stdout=subprocess.PIPE, text=True)
    try:
        assert follower.stdout is not None
        follower.stdout.readline()  # the last event so far
        send_and_wait(daemon, daemon.port)
        deadline = time.monotonic() + 20
        seen = []
        while "message.accepted" not in seen:  # bounded by the deadline and readline's data
            assert time.monotonic() < deadline
            seen.append(follower.stdout.readline().split()[2])
    finally:
        follower.kill()
        follower.wait()
        if follower.stdout is not None:
            follower.stdout.close()


@pytest.mark.slow
def test_verify_is_clean_then_precise_on_a_damaged_copy(running: tuple[Daemon, str], tmp_path: Path) -> None:
    daemon, _ = running
    clean = run_cli(daemon.workdir, "journal", "verify")
    assert clean.returncode == 0, clean.stdout
    assert clean.stdout.strip().endswith("1 blobs checked: clean")
    daemon.kill()

    # A damaged copy: one record overwritten with garbage, one deleted, one blob removed.
    import lmdb

    copy = tmp_path / "damaged"
    shutil.copytree(daemon.workdir / "var" / "journal", copy / "var" / "journal")
    env = lmdb.open(str(copy / "var" / "journal"), max_dbs=8)
    events, blobs = env.open_db(b"events"), env.open_db(b"blobs")
    with env.begin(write=True) as txn:
        txn.put((2).to_bytes(8, "big"), b"\xff\x00garbage", db=events)
        txn.delete((4).to_bytes(8, "big"), db=events)
        key = next(iter(txn.cursor(db=blobs).iternext(values=False)))
        txn.delete(key, db=blobs)
    env.close()
    damaged = run_cli(copy, "journal", "verify")
    assert damaged.returncode == 1
    out = damaged.stdout
    assert "position 2: does not decode" in out
    assert "position 5: positions 4 to 4 are missing" in out
    assert f"refers to blob {key.decode()!r}, which is missing" in out
    report = json.loads(run_cli(copy, "journal", "verify", "--json").stdout)
    assert report["clean"] is False and len(report["problems"]) == 3


@pytest.mark.slow
def test_journal_rebuild_compares_with_the_checkpoint_and_can_repair_it(running: tuple[Daemon, str]) -> None:
    import signal

    from vsmtp_journal import Journal

    from vsmtp.queue.projection import latest_checkpoint
    from vsmtp.queue.state import to_snapshot

    daemon, _ = running
    daemon.kill(signal.SIGTERM)  # a graceful stop writes a last checkpoint
    result = run_cli(daemon.workdir, "journal", "rebuild", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["matches"] is True and report["checkpoint"] is not None and report["from"] == 0
    with Journal(daemon.workdir / "var" / "journal") as journal:
        good = latest_checkpoint(journal)
        assert good is not None and good.completed == 1
        journal.write_snapshot(good.position, to_snapshot(dataclasses.replace(good, completed=7)))  # damaged
    damaged = run_cli(daemon.workdir, "journal", "rebuild")
    assert damaged.returncode == 1 and "DIFFERS from the checkpoint" in damaged.stdout
    repaired = run_cli(daemon.workdir, "journal", "rebuild", "--write")
    assert repaired.returncode == 1 and "written as the checkpoint" in repaired.stdout
    assert run_cli(daemon.workdir, "journal", "rebuild").returncode == 0
