"""The operator's commands, run as a new user would: from the daemon's directory, no arguments."""

from __future__ import annotations

import json
import smtplib
import time
from pathlib import Path

import pytest

from .daemon import Daemon, run_cli

CONFIG = '[[listeners]]\naddresses = ["127.0.0.1:0"]\n'


@pytest.mark.slow
def test_journal_tail_shows_a_message_from_session_opened_to_delivery(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path, CONFIG)
    try:
        port = daemon.start()
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.sendmail("a@example.org", ["bob@localhost"], "Subject: hi\r\n\r\nhello\r\n")
        deadline = time.monotonic() + 20
        while True:  # bounded: until the delivery shows in the journal
            out = run_cli(tmp_path, "journal", "tail")
            assert out.returncode == 0, out.stderr
            if "delivery.succeeded" in out.stdout and "session.closed" in out.stdout:
                break
            assert time.monotonic() < deadline, out.stdout
            time.sleep(0.1)
    finally:
        daemon.kill()
    lines = out.stdout.splitlines()
    tags = [line.split()[2] for line in lines]
    assert tags[0] == "session.opened"
    assert tags.index("session.opened") < tags.index("message.accepted") < tags.index("delivery.succeeded")
    assert {"session.helo", "session.mail", "recipient.accepted", "session.closed"} <= set(tags)
    assert all(line.startswith("#") for line in lines)

    as_json = [json.loads(line) for line in run_cli(tmp_path, "journal", "tail", "--json").stdout.splitlines()]
    accepted = next(r for r in as_json if r["tag"] == "message.accepted")
    assert accepted["payload"]["recipients"] == ["bob@localhost"]
    assert [r["position"] for r in as_json] == list(range(1, len(as_json) + 1))
    assert len(run_cli(tmp_path, "journal", "tail", "-n", "2").stdout.splitlines()) == 2


def test_journal_tail_without_a_journal_says_so(tmp_path: Path) -> None:
    out = run_cli(tmp_path, "journal", "tail")
    assert out.returncode == 1
    assert "no journal at var/journal" in out.stderr


def test_a_bad_config_names_file_line_and_key(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text('hostname = "mx"\n\n[limits]\nmessage_size = "big"\n')
    out = run_cli(tmp_path, "serve", "--config", "bad.toml")
    assert out.returncode == 1
    assert out.stderr.strip() == "vsmtp: bad.toml, line 4: limits.message_size: expected an integer, got 'big'"


def test_config_show_prints_the_embedded_defaults(tmp_path: Path) -> None:
    out = run_cli(tmp_path, "config", "show")
    shown = json.loads(out.stdout)
    assert shown["listeners"][0]["addresses"] == ["127.0.0.1:2525", "[::1]:2525"]
    assert shown["local"]["domains"] == ["localhost"]
    assert shown["journal"]["path"] == "var/journal"
