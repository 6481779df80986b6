"""anvil (vsmtp/net/anvil.py): limits across sessions and receiving processes, exact; rates
over a sliding interval; a lock-out of failed logins that a right password does not lift."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme

from vsmtp.config import AnvilConfig, Config, LimitsConfig
from vsmtp.credentials import hash_password
from vsmtp.net.anvil import Anvil, network
from vsmtp.net.counts import ConnectionCounts

from ..clients import BlockingClient, Peer
from ..conftest import port_of, with_changes
from ..daemon import Daemon
from .test_auth import PASSWORD, USERS, login, over_tls


@pytest.fixture
def auth_config(config: Config, tmp_path: Path) -> Config:
    path = tmp_path / "passwords"
    path.write_text("".join(f"{user}:{hash_password(PASSWORD)}\n" for user in USERS))
    return with_changes(config, auth={"passwords": str(path)})


def test_rates_count_over_a_sliding_interval() -> None:
    now = 120.0  # the start of a window
    anvil = Anvil(ConnectionCounts(), clock=lambda: now)
    assert [anvil.take("mail:192.0.2.1", 3, 60.0) for _ in range(4)] == [True, True, True, False]
    assert anvil.take("mail:192.0.2.2", 3, 60.0)  # another key
    now += 60.0  # the next window's start: the last one still weighs all
    assert not anvil.take("mail:192.0.2.1", 3, 60.0)
    now += 50.0  # 50 s into it: a sixth of the old window is left (0.5 of 3)
    assert anvil.take("mail:192.0.2.1", 3, 60.0)
    now += 120.0
    assert [anvil.take("mail:192.0.2.1", 3, 60.0) for _ in range(4)] == [True, True, True, False]


def test_sessions_at_once_per_address_and_per_network() -> None:
    anvil = Anvil(ConnectionCounts())
    limits, config = LimitsConfig(max_connections=100, max_connections_per_ip=2), AnvilConfig(network_connections=3)
    assert anvil.admit("192.0.2.1", limits, config, exempt=False) is None
    assert anvil.admit("192.0.2.1", limits, config, exempt=False) is None
    assert str(anvil.admit("192.0.2.1", limits, config, exempt=False)).startswith("421 4.7.0 Error: too many connections from your address")
    assert anvil.admit("192.0.2.2", limits, config, exempt=False) is None
    assert "your network" in str(anvil.admit("192.0.2.3", limits, config, exempt=False))  # a fourth from 192.0.2.0/24
    assert anvil.admit("198.51.100.1", limits, config, exempt=False) is None
    assert anvil.admit("192.0.2.3", limits, config, exempt=True) is None  # relay.networks: not limited here
    anvil.release("192.0.2.1")
    assert anvil.admit("192.0.2.1", limits, config, exempt=False) is not None  # the network is still full
    assert anvil.counts.total() == 4
    assert network("2001:db8:1:2:3::4") == "2001:db8:1:2::/64" and network("::ffff:192.0.2.7") == "192.0.2.0/24"


def test_a_lockout_lasts_its_time() -> None:
    now = 0.0
    anvil = Anvil(ConnectionCounts(), clock=lambda: now)
    assert [anvil.failed("auth:192.0.2.1", 3, 60.0, 900.0) for _ in range(3)] == [False, False, True]
    assert anvil.locked_out("auth:192.0.2.1", "auth-user:alice") == 900.0
    now += 899.0
    assert anvil.locked_out("auth:192.0.2.1") == pytest.approx(1.0)
    now += 2.0
    assert anvil.locked_out("auth:192.0.2.1") == 0.0 or anvil.locked_out("auth:192.0.2.1") < 0


async def test_message_and_recipient_rates(start_server: Any, config: Config) -> None:
    running = await start_server(with_changes(config, anvil={"message_rate": 2, "recipient_rate": 3}))
    peer = await Peer.connect(port_of(running))
    await peer.replies(1)
    await peer.send(b"EHLO c.example\r\n")
    await peer.replies(1)
    said = []
    for _ in range(3):
        await peer.send(b"MAIL FROM:<a@example.org>\r\n")
        said += await peer.replies(1)
        await peer.send(b"RSET\r\n")
        await peer.replies(1)
    assert [s[:9] for s in said] == ["250 2.1.0", "250 2.1.0", "450 4.7.1"]
    await peer.aclose()
    other = await Peer.connect(port_of(running), source="127.0.0.2")  # another address: its own count
    await other.replies(1)
    await other.send(b"EHLO c.example\r\nMAIL FROM:<a@example.org>\r\n" + b"".join(b"RCPT TO:<u%d@localhost>\r\n" % n for n in range(4)))
    answers = await other.replies(6)
    assert [a[:9] for a in answers[2:]] == ["250 2.1.5", "250 2.1.5", "250 2.1.5", "450 4.7.1"]
    await other.aclose()


async def test_failed_logins_lock_out_the_address_and_the_user_whatever_the_password(
    start_server: Any,
    auth_config: Config,
    ca: trustme.CA,
) -> None:
    running = await start_server(with_changes(auth_config, anvil={"auth_failures": 3, "auth_user_failures": 5}))

    def attempt(user: str, password: str, source: str = "127.0.0.1") -> tuple[int, bytes]:
        import smtplib

        with smtplib.SMTP("127.0.0.1", port_of(running), timeout=10, source_address=(source, 0)) as client:
            client.starttls(context=_tls(ca))
            client.ehlo("client.test")
            return login(client, user, password)

    for _ in range(3):
        assert (await trio.to_thread.run_sync(attempt, "alice@example.org", "wrong"))[0] == 535
    # Locked out: even the right password fails now, from that address.
    assert await trio.to_thread.run_sync(attempt, "alice@example.org", PASSWORD) == (
        454,
        b"4.7.0 Too many failed authentications, try again later",
    )
    assert (await trio.to_thread.run_sync(attempt, "mallory@example.org", PASSWORD))[0] == 454  # the address, whoever
    assert (await trio.to_thread.run_sync(attempt, "alice@example.org", PASSWORD, "127.0.0.2"))[0] == 235  # alice elsewhere
    # A user name tried from many addresses is locked out for all of them.
    for n in range(5):
        assert (await trio.to_thread.run_sync(attempt, "mallory@example.org", "wrong", f"127.0.1.{n + 1}"))[0] == 535
    assert (await trio.to_thread.run_sync(attempt, "mallory@example.org", PASSWORD, "127.0.2.1"))[0] == 454


async def test_relay_networks_are_never_locked_out(start_server: Any, auth_config: Config, ca: trustme.CA) -> None:
    config = with_changes(auth_config, anvil={"auth_failures": 2}, relay={"networks": ("127.0.0.1/32",)})
    running = await start_server(config)
    for _ in range(3):
        assert (await over_tls(running, ca, lambda c: login(c, "alice@example.org", "wrong")))[0] == 535
    assert (await over_tls(running, ca, lambda c: login(c, "alice@example.org")))[0] == 235


def _tls(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


@pytest.mark.slow
def test_sessions_at_once_are_exact_across_receiving_processes(tmp_path: Path) -> None:
    config = 'workers = 2\n[[listeners]]\naddresses = ["127.0.0.1:0"]\n[limits]\nmax_connections_per_ip = 10\n'
    daemon = Daemon(tmp_path, config + "[relay]\nnetworks = []\n")  # relay.networks are exempt, as Postfix's mynetworks
    port = daemon.start()
    clients: list[BlockingClient] = []
    greetings: list[str] = []
    lock = threading.Lock()
    try:

        def connect() -> None:
            client = BlockingClient(port)
            first = client.replies()[0]
            with lock:
                greetings.append(first)
                clients.append(client)

        threads = [threading.Thread(target=connect) for _ in range(40)]  # all at once, to both processes
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
        assert sum(g.startswith("220") for g in greetings) == 10  # exactly: no overshoot
        assert sum(g.startswith("421 4.7.0") for g in greetings) == 30
    finally:
        for client in clients:
            client.close()
        daemon.kill()


@pytest.mark.slow
def test_a_connection_rate_holds_across_receiving_processes(tmp_path: Path) -> None:
    config = 'workers = 2\n[[listeners]]\naddresses = ["127.0.0.1:0"]\n[anvil]\nconnection_rate = 5\n'
    daemon = Daemon(tmp_path, config + "[relay]\nnetworks = []\n")
    port = daemon.start()
    try:
        greetings = []
        for _ in range(8):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                greetings.append(sock.recv(200).decode())
        assert sum(g.startswith("220") for g in greetings) == 5
        assert all("lately" in g for g in greetings[5:])
    finally:
        daemon.kill()
