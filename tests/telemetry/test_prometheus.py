"""/metrics scraped by a real Prometheus (Debian's package, its own configuration and data in a
temporary directory, scraping 127.0.0.1 only), from a `vsmtp serve` with several receiving
processes: one endpoint for the whole server, counters that add up across processes and do
not go down when a receiving process dies."""

from __future__ import annotations

import json
import os
import shutil
import signal
import smtplib
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..daemon import Daemon, wait_until

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
N = 24

CONFIG = """
hostname = "mx.test"
workers = 2
[[listeners]]
addresses = ["127.0.0.1:0"]
[telemetry]
prometheus = "127.0.0.1:{port}"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def metrics_port() -> int:
    return free_port()


@pytest.fixture
def prometheus(tmp_path: Path, metrics_port: int) -> Iterator[str]:
    if not os.path.exists(PROMETHEUS):
        pytest.skip("prometheus is not installed (Debian package prometheus; tools/system-packages installs it as root)")
    web = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        f"scrape_configs:\n  - job_name: vsmtp\n    static_configs:\n      - targets: ['127.0.0.1:{metrics_port}']\n"
    )
    with (tmp_path / "prometheus.log").open("wb") as log:
        process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'prometheus-data'}",
                f"--web.listen-address=127.0.0.1:{web}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{web}"
    try:
        wait_until(lambda: _ready(url), lambda: (tmp_path / "prometheus.log").read_text(), timeout=30)
        yield url
    finally:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(10)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def query(url: str, expression: str) -> dict[str, float]:
    """The instant vector of `expression`, as {label set: value}."""
    with urllib.request.urlopen(f"{url}/api/v1/query?query={urllib.parse.quote(expression)}", timeout=5) as response:
        answer = json.load(response)
    assert answer["status"] == "success", answer
    return {json.dumps(item["metric"], sort_keys=True): float(item["value"][1]) for item in answer["data"]["result"]}


def total(url: str, expression: str) -> float:
    return sum(query(url, expression).values())


def send(port: int, count: int, to: str = "bob@localhost") -> None:
    for n in range(count):  # a connection each, so that the kernel spreads them over the receiving processes
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.sendmail("a@example.org", [to], f"Subject: {n}\r\n\r\nx\r\n")


def receivers(pid: int) -> dict[int, int]:
    """The receiving processes of a supervisor: index -> pid."""
    found = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        for child in (task / "children").read_text().split():
            command = Path(f"/proc/{child}/cmdline").read_bytes().decode(errors="replace")
            if "vsmtp.workers" in command:
                found[json.loads(command.split("\0")[3])["index"]] = int(child)  # python -m vsmtp.workers SPEC
    return found


def test_prometheus_reads_the_whole_server_from_one_endpoint(tmp_path: Path, metrics_port: int, prometheus: str) -> None:
    (tmp_path / "vsmtp").mkdir()
    server = Daemon(tmp_path / "vsmtp", CONFIG.format(port=metrics_port))
    port = server.start()
    try:
        send(port, N)
        wait_until(
            lambda: total(prometheus, "vsmtp_messages_accepted_total") == N,
            lambda: f"{query(prometheus, 'vsmtp_messages_accepted_total')}\n{server.log()}",
            timeout=30,
        )
        log = server.log()
        assert "receiver-1" in log and "receiver-2" in log
        by_receiver = {
            i: sum(1 for line in log.splitlines() if f"receiver-{i} " in line and "from=<a@example.org>" in line) for i in (1, 2)
        }
        assert sum(by_receiver.values()) == N and all(by_receiver.values()), by_receiver  # both took some
        assert total(prometheus, "vsmtp_smtp_sessions_total") >= N
        assert total(prometheus, 'vsmtp_smtp_commands_total{smtp_command="RCPT",smtp_reply_class="2xx"}') == N
        wait_until(lambda: total(prometheus, 'vsmtp_delivery_attempts_total{vsmtp_outcome="delivered"}') == N, "deliveries", timeout=30)
        assert total(prometheus, "vsmtp_smtp_accept_duration_seconds_count") == N
        assert query(prometheus, 'vsmtp_queue_messages{vsmtp_state="active"}')  # the gauges are there
        assert total(prometheus, "vsmtp_journal_free_bytes") > 0

        # A receiving process dies: what it counted stays counted.
        assert server.proc is not None
        os.kill(receivers(server.proc.pid)[1], signal.SIGKILL)
        wait_until(lambda: 1 in receivers(server.proc.pid) and "receiving process 1" in server.log(), "no restart", timeout=30)
        time.sleep(1.5)  # the restarted process is up
        send(port, 4)
        send(port, 1, to="carol@unreachable.invalid")  # stays deferred: the tests have no DNS
        wait_until(
            lambda: total(prometheus, "vsmtp_messages_accepted_total") == N + 5,
            lambda: str(query(prometheus, "vsmtp_messages_accepted_total")),
            timeout=30,
        )
        wait_until(
            lambda: total(prometheus, 'vsmtp_queue_messages{vsmtp_state="deferred"}') == 1,
            lambda: str(query(prometheus, "vsmtp_queue_messages")),
            timeout=30,
        )
        resets = total(prometheus, "resets(vsmtp_messages_accepted_total[5m])")
        assert resets == 0  # never went down
    finally:
        server.kill()
