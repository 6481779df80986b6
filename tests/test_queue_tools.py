"""`vsmtp queue ...` against a running server: every action is an event, seen in the trace."""

from __future__ import annotations

import json
import smtplib
import time
from pathlib import Path
from typing import Any

import pytest

from .daemon import Daemon, run_cli, wait_until

# Remote mail cannot go anywhere (the tests' DNS answers nothing): it waits in the queue.
CONFIG = '[[listeners]]\naddresses = ["127.0.0.1:0"]\n[delivery]\nretry_first = 3600\n'


def queue(daemon: Daemon) -> list[dict[str, Any]]:
    out = run_cli(daemon.workdir, "queue", "list", "--json")
    assert out.returncode == 0, out.stderr
    rows: list[dict[str, Any]] = json.loads(out.stdout)
    return rows


@pytest.mark.slow
def test_list_show_hold_retry_release_remove_on_a_running_server(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path, CONFIG)
    try:
        port = daemon.start()
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.sendmail("a@example.org", ["user@far.test"], "Subject: waiting\r\n\r\nfor a while\r\n")
        wait_until(lambda: any(row["last_error"] for row in queue(daemon)), "the first attempt failed")
        [row] = queue(daemon)
        queue_id = row["queue_id"]
        assert row["pending"] == ["user@far.test"] and row["sender"] == "a@example.org" and not row["held"]
        assert "far.test" in row["last_error"]

        shown = json.loads(run_cli(daemon.workdir, "queue", "show", queue_id, "--json").stdout)
        assert shown["recipients"][0]["status"] == "pending" and shown["recipients"][0]["attempts"] == 1
        assert ["Subject", "waiting"] in shown["headers"]
        assert "user@far.test" in run_cli(daemon.workdir, "queue", "show", queue_id).stdout

        stats = json.loads(run_cli(daemon.workdir, "queue", "stats", "--json").stdout)
        assert stats["domains"] == {"far.test": dict.fromkeys(stats["buckets"], 0) | {"5m": 1}}
        table = run_cli(daemon.workdir, "queue", "stats").stdout.splitlines()
        assert table[0].split() == ["T", *stats["buckets"]] and table[2].split()[:3] == ["far.test", "1", "1"]

        assert run_cli(daemon.workdir, "queue", "hold", queue_id).returncode == 0
        assert queue(daemon)[0]["held"]
        assert run_cli(daemon.workdir, "queue", "retry", queue_id).returncode == 0
        time.sleep(1.5)  # held: the retry waits
        assert queue(daemon)[0]["next_attempt"] == 0.0
        show = json.loads(run_cli(daemon.workdir, "queue", "show", queue_id, "--json").stdout)
        assert show["recipients"][0]["attempts"] == 1

        assert run_cli(daemon.workdir, "queue", "release", queue_id).returncode == 0
        wait_until(
            lambda: json.loads(run_cli(daemon.workdir, "queue", "show", queue_id, "--json").stdout)["recipients"][0]["attempts"] == 2,
            "released and retried at once",
        )
        assert run_cli(daemon.workdir, "queue", "remove", queue_id).returncode == 0
        assert queue(daemon) == []

        trace = run_cli(daemon.workdir, "trace", queue_id).stdout
        tags = [line.split()[2] for line in trace.splitlines()[1:]]
        for tag in ("message.held", "message.retry_requested", "message.released", "message.removed"):
            assert tag in tags, trace
        assert tags.index("message.held") < tags.index("message.released") < tags.index("message.removed")

        missing = run_cli(daemon.workdir, "queue", "hold", "NOSUCHID")
        assert missing.returncode == 1 and "not in the queue" in missing.stderr
        assert run_cli(daemon.workdir, "queue", "retry").returncode == 2
    finally:
        daemon.kill()
