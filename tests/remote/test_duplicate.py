"""SIGKILL during a remote delivery, after the data went and before the host's 250 came back:
after the restart the message goes again (SMTP is at least once), and the duplicate is
counted and reported (delivery.possible_duplicate) instead of passing unnoticed."""

from __future__ import annotations

import signal
import smtplib
import threading
from pathlib import Path

import pytest
import trio

from ..daemon import Daemon, run_cli, wait_until
from ..dnsserver import DnsServer
from ..smtpsink import Sink

ZONE = Path(__file__).with_name("test.zone")


def run_sink(sink: Sink, ready: threading.Event, stop: threading.Event) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(sink.serve)
            ready.set()
            while not stop.is_set():  # bounded by the test's stop
                await trio.sleep(0.05)
            nursery.cancel_scope.cancel()

    trio.run(main)


@pytest.mark.slow
def test_a_delivery_cut_after_its_data_is_sent_again_and_reported(tmp_path: Path) -> None:
    sink = Sink(host="127.0.0.2", data_delay=3.0)  # takes the message, says 250 three seconds later
    ready, stop = threading.Event(), threading.Event()
    thread = threading.Thread(target=run_sink, args=(sink, ready, stop), daemon=True)
    thread.start()
    assert ready.wait(10)
    with DnsServer.from_file(ZONE, "test.") as dns:
        config = (
            '[[listeners]]\naddresses = ["127.0.0.1:0"]\n'
            f"[delivery]\nremote_port = {sink.port}\nretry_first = 0.5\n"
            f'[dns]\nnameservers = ["{dns.host}:{dns.port}"]\ntimeout = 3\n'
        )
        daemon = Daemon(tmp_path, config)
        try:
            port = daemon.start()
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                client.sendmail("a@example.org", ["user@far.test"], "Subject: once or twice\r\n\r\nbody\r\n")
            wait_until(lambda: sink.received, daemon.log, interval=0.02)  # the host has the data, its 250 is 3 s away
            daemon.kill(signal.SIGKILL)
            daemon.start()
            wait_until(lambda: len(sink.received) >= 2, daemon.log)  # sent again after the restart

            def journal_text() -> str:
                return run_cli(tmp_path, "journal", "tail", "-n", "0").stdout

            wait_until(lambda: "delivery.possible_duplicate" in journal_text(), journal_text, interval=0.1)
            stats = run_cli(tmp_path, "journal", "stats", "--json").stdout
            assert '"delivery.possible_duplicate": 1' in stats  # counted
            assert "may have received this message twice" in daemon.log()  # and reported
            assert [m.recipients for m in sink.received] == [["user@far.test"], ["user@far.test"]]
        finally:
            daemon.kill()
            stop.set()
            thread.join(10)
