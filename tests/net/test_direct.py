"""A plain TCP session reads and writes its socket directly (vsmtp/net/direct.py): what that
must not change. Replies arrive whole and in order even when the socket cannot take them at
once, and a client that never lets its session wait cannot keep the others from being served."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Any

import pytest
import trio

from vsmtp.config import Config
from vsmtp.net import direct

from ..conftest import port_of, with_changes


def test_receive_now_reads_what_has_arrived_and_none_otherwise() -> None:
    a, b = socket.socketpair()
    with a, b:
        b.setblocking(False)
        assert direct.receive_now(b.fileno(), 100) is None
        a.sendall(b"EHLO x\r\n")
        assert direct.receive_now(b.fileno(), 100) == b"EHLO x\r\n"
        a.close()
        assert direct.receive_now(b.fileno(), 100) == b""  # the peer closed


def test_send_now_writes_what_the_socket_takes_and_says_how_much() -> None:
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        data = b"x" * (16 * 1024 * 1024)  # far more than a socket buffer
        sent = direct.send_now(a.fileno(), data)
        assert 0 < sent < len(data)
        assert direct.send_now(a.fileno(), data[sent:]) == 0  # full: nothing taken, no error


NEVER_OPEN = 1 << 24  # above any descriptor this process may hold: EBADF


def test_a_peer_that_went_away_is_a_broken_stream_and_a_closed_descriptor_a_closed_one() -> None:
    a, b = socket.socketpair()
    b.close()
    with a:
        a.setblocking(False)
        with pytest.raises(trio.BrokenResourceError):
            direct.send_now(a.fileno(), b"250 OK\r\n")
    with pytest.raises(trio.ClosedResourceError):
        direct.receive_now(NEVER_OPEN, 10)


async def test_replies_that_overflow_the_socket_arrive_whole_and_in_order(start_server: Any, config: Config) -> None:
    """A client pipelines thousands of commands and reads nothing for a while: the replies
    fill its socket, so the session writes part of a batch and waits for room for the rest."""
    running = await start_server(with_changes(config, limits={"junk_commands": 0}))  # NOOPs without end
    count = 20_000
    commands = b"".join(b"NOOP %d\r\n" % i for i in range(count)) + b"QUIT\r\n"

    def converse() -> bytes:
        with socket.create_connection(("127.0.0.1", port_of(running)), timeout=20) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: the server's writes fill it
            writer = threading.Thread(target=sock.sendall, args=(commands,))
            writer.start()
            threading.Event().wait(0.5)  # read nothing while the replies pile up
            received = bytearray()
            while chunk := sock.recv(65536):
                received += chunk
            writer.join()
            return bytes(received)

    received = await trio.to_thread.run_sync(converse)
    lines = received.split(b"\r\n")
    assert lines[0].startswith(b"220 ")
    assert lines[1 : count + 1] == [b"250 2.0.0 Ok"] * count
    assert lines[count + 1].startswith(b"221 ")
    assert lines[count + 2 :] == [b""]


async def test_a_client_that_pipelines_without_pause_does_not_starve_another(start_server: Any, config: Config) -> None:
    """Its input is always there, so its session never has to wait for it: it must still
    let the others run (it yields before each read)."""
    running = await start_server(with_changes(config, limits={"junk_commands": 0}))  # NOOPs without end
    port = port_of(running)
    stop = threading.Event()
    flooded = [0]

    def drain(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while sock.recv(65536):
                pass

    def flood() -> None:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            sock.recv(1024)
            reader = threading.Thread(target=drain, args=(sock,), daemon=True)
            reader.start()
            batch = b"NOOP\r\n" * 10_000
            until = time.monotonic() + 15  # bounded: past the polite client's own timeout
            while not stop.is_set() and time.monotonic() < until:
                sock.sendall(batch)
                flooded[0] += 1
            sock.shutdown(socket.SHUT_WR)  # the server answers what it has and closes: the reader ends
            reader.join(20)

    def polite() -> list[bytes]:
        while flooded[0] < 3:  # the flood is under way
            threading.Event().wait(0.01)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            f = sock.makefile("rb")
            replies = [f.readline()]
            sock.sendall(b"EHLO polite.test\r\n")
            while not (line := f.readline()).startswith(b"250 "):
                replies.append(line)
            replies.append(line)
            sock.sendall(b"QUIT\r\n")
            replies.append(f.readline())
            return replies

    flooder = threading.Thread(target=flood, daemon=True)
    flooder.start()
    try:
        replies = await trio.to_thread.run_sync(polite)
        during = flooder.is_alive()
    finally:
        stop.set()
        await trio.to_thread.run_sync(flooder.join, 30)
    assert replies[0].startswith(b"220 ")
    assert replies[-2].startswith(b"250 ")
    assert replies[-1].startswith(b"221 ")
    assert during  # served while the flood went on, not after it ended
