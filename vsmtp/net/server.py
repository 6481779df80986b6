"""Listeners: bind every configured address, accept connections, run one Session each.

All sessions live in one nursery. Over the connection limit a client gets 421 4.7.0 and is
closed at once, so one flood cannot starve the sessions already running.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio
from vsmtp_journal import GroupCommitWriter

from ..config import Config, ListenerConfig
from ..smtp.replies import Reply
from .session import Peer, Session

log = logging.getLogger(__name__)

TOO_MANY_CONNECTIONS = Reply.of(421, "4.7.0", "Error: too many connections, try again later")


@dataclass(frozen=True, slots=True, kw_only=True)
class Bound:
    listener: str
    host: str
    port: int


def parse_address(address: str) -> tuple[str, int]:
    """'127.0.0.1:25' -> ('127.0.0.1', 25); '[::1]:25' -> ('::1', 25)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"listener address {address!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def _peer(sockname: object) -> Peer:
    assert isinstance(sockname, tuple)
    return Peer(host=str(sockname[0]), port=int(sockname[1]))


async def open_listeners(config: Config) -> list[tuple[ListenerConfig, trio.SocketListener]]:
    """Bind every address of every listener. An address family this host lacks (no IPv6
    loopback, say) is skipped with a warning; any other failure to bind is fatal."""
    bound = []
    for listener in config.listeners:
        for address in listener.addresses:
            host, port = parse_address(address)
            try:
                for sock_listener in await trio.open_tcp_listeners(port, host=host):
                    bound.append((listener, sock_listener))
            except OSError as exc:
                if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                    log.warning("listener %s: cannot bind %s (%s); skipped", listener.name, address, exc.strerror)
                    continue
                raise OSError(exc.errno, f"listener {listener.name}: cannot bind {address}: {exc.strerror}") from exc
    if not bound:
        raise OSError(errno.EADDRNOTAVAIL, "no listener address could be bound")
    return bound


async def serve_smtp(
    config: Config,
    writer: GroupCommitWriter,
    *,
    task_status: trio.TaskStatus[list[Bound]] = trio.TASK_STATUS_IGNORED,
) -> None:
    listeners = await open_listeners(config)
    active = 0

    def handler_for(listener: ListenerConfig) -> Callable[[trio.SocketStream], Awaitable[None]]:
        async def handle(stream: trio.SocketStream) -> None:
            nonlocal active
            stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
            if active >= config.limits.max_connections:
                try:
                    await stream.send_all(TOO_MANY_CONNECTIONS.to_bytes())
                finally:
                    await trio.aclose_forcefully(stream)
                return
            active += 1
            try:
                session = Session(
                    stream,
                    config=config,
                    listener=listener,
                    writer=writer,
                    peer=_peer(stream.socket.getpeername()),
                    local=_peer(stream.socket.getsockname()),
                )
                await session.run()
            except Exception:
                log.exception("session ended by an unexpected error")
            finally:
                active -= 1

        return handle

    bound = []
    async with trio.open_nursery() as nursery:
        for listener, sock_listener in listeners:
            host, port = sock_listener.socket.getsockname()[:2]
            bound.append(Bound(listener=listener.name, host=host, port=port))
            log.info("listener %s: accepting SMTP on %s port %d", listener.name, host, port)
            nursery.start_soon(trio.serve_listeners, handler_for(listener), [sock_listener])
        task_status.started(bound)
