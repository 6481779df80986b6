"""`vsmtp serve` with several receiving processes: one port, one journal, one delivery process."""

from __future__ import annotations

import os
import signal
import smtplib
import time
from pathlib import Path

import pytest

from .daemon import Daemon, run_cli, wait_until
from .test_crash import maildir

CONFIG = 'workers = 2\n[[listeners]]\naddresses = ["127.0.0.1:0"]\n'


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def receivers(daemon: Daemon, count: int = 2, timeout: float = 20) -> list[int]:
    proc = daemon.proc
    assert proc is not None
    wait_until(lambda: len(children(proc.pid)) >= count, daemon.log, timeout=timeout)
    return children(proc.pid)


def send(port: int, count: int, tag: str) -> list[str]:
    """`count` messages, one connection each (so the kernel spreads them); their queue ids."""
    ids = []
    for n in range(count):
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.ehlo("client.test")
            client.mail("a@example.org")
            client.rcpt("bob@localhost")
            code, text = client.data(f"Subject: {tag} {n}\r\n\r\nbody {n}\r\n")
            assert code == 250, text
            ids.append(text.decode().rsplit(" ", 1)[-1])
    return ids


def wait_files(workdir: Path, count: int, timeout: float = 30) -> None:
    wait_until(lambda: len(maildir(workdir)) >= count, lambda: f"{len(maildir(workdir))} of {count} delivered", timeout=timeout)


@pytest.fixture
def daemon(tmp_path: Path) -> Daemon:
    daemon = Daemon(tmp_path, CONFIG)
    yield daemon  # type: ignore[misc]
    daemon.kill()


@pytest.mark.slow
def test_two_receiving_processes_share_the_port_and_the_journal(daemon: Daemon) -> None:
    port = daemon.start()
    assert len(receivers(daemon)) == 2
    ids = send(port, 30, "spread")
    wait_files(daemon.workdir, 30)
    log = daemon.log()
    assert "receiver-1" in log and "receiver-2" in log
    by_process = {name: sum(f"{name} vsmtp.net.session: {qid}" in log for qid in ids) for name in ("receiver-1", "receiver-2")}
    assert sum(by_process.values()) == 30 and all(by_process.values()), by_process  # both took some
    verify = run_cli(daemon.workdir, "journal", "verify")
    assert verify.returncode == 0, verify.stdout  # positions gapless across the writers
    assert len({p.name for p in maildir(daemon.workdir)}) == 30


@pytest.mark.slow
def test_a_receiving_process_that_dies_is_restarted_and_service_goes_on(daemon: Daemon) -> None:
    port = daemon.start()
    first = receivers(daemon)
    os.kill(first[0], signal.SIGKILL)
    wait_until(lambda: "restarting" in daemon.log(), daemon.log)
    after = receivers(daemon)
    assert first[0] not in after and first[1] in after
    send(port, 20, "after")
    wait_files(daemon.workdir, 20)


@pytest.mark.slow
def test_receiving_processes_exit_when_the_supervisor_is_killed(daemon: Daemon) -> None:
    daemon.start()
    pids = receivers(daemon)
    daemon.kill(signal.SIGKILL)
    wait_until(lambda: not any(alive(pid) for pid in pids), "receiving processes outlived the supervisor", timeout=10)


@pytest.mark.slow
def test_the_per_address_limit_holds_across_receiving_processes(tmp_path: Path) -> None:
    from .clients import BlockingClient

    # relay.networks (127.0.0.0/8 by default) are exempt from the per-address limit, as Postfix's mynetworks.
    daemon = Daemon(tmp_path, CONFIG + "[limits]\nmax_connections_per_ip = 3\n[relay]\nnetworks = []\n")
    held: list[BlockingClient] = []
    try:
        port = daemon.start()
        receivers(daemon)
        for _ in range(3):
            client = BlockingClient(port)
            assert client.replies()[0].startswith("220")
            held.append(client)
        for _ in range(6):  # whichever process the kernel picks, the fourth is one too many
            extra = BlockingClient(port)
            assert extra.replies() == ["421 4.7.0 Error: too many connections from your address"]
            extra.close()
        held.pop().close()
        deadline = time.monotonic() + 10
        while True:  # bounded: the freed place shows once that session has ended
            again = BlockingClient(port)
            first = again.replies()[0]
            again.close()
            if first.startswith("220"):
                break
            assert time.monotonic() < deadline, first
            time.sleep(0.05)
    finally:
        for client in held:
            client.close()
        daemon.kill()


@pytest.mark.slow
def test_a_restarted_receiver_uses_the_configuration_in_force_not_a_broken_file(daemon: Daemon) -> None:
    from .clients import BlockingClient

    port = daemon.start()
    first = receivers(daemon)
    daemon.config.write_text("hostname = 42\n")  # broken after the start
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "reload failed, keeping the configuration in force" in daemon.log(), daemon.log, timeout=10)
    os.kill(first[0], signal.SIGKILL)
    wait_until(lambda: any(pid not in first for pid in receivers(daemon)), daemon.log)  # restarted once
    for _ in range(8):  # whichever process answers, it greets with the name in force
        client = BlockingClient(port)
        try:
            greeting = client.replies()[0]
        finally:
            client.close()
        assert greeting.startswith("220 ") and " 42 " not in greeting
    assert daemon.log().count("exited with") == 1, daemon.log()  # no crash loop


@pytest.mark.slow
def test_a_second_vsmtp_on_the_same_journal_refuses_to_start(daemon: Daemon) -> None:
    import subprocess

    from .daemon import VSMTP

    daemon.start()
    second = subprocess.run(
        [VSMTP, "serve", "--config", str(daemon.config)], cwd=daemon.workdir, capture_output=True, text=True, timeout=30
    )
    assert second.returncode == 1
    assert f"another vsmtp (pid {daemon.proc.pid}) is already serving the journal" in second.stderr  # type: ignore[union-attr]
    one_process = daemon.workdir / "one.toml"  # the single-process mode takes the same lock
    one_process.write_text(daemon.config.read_text().replace("workers = 2", "workers = 0"))
    single = subprocess.run([VSMTP, "serve", "--config", str(one_process)], cwd=daemon.workdir, capture_output=True, text=True, timeout=30)
    assert single.returncode == 1 and "is already serving the journal" in single.stderr
