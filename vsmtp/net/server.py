"""Listeners: bind every configured address, accept connections, run one Session each.

SmtpService owns what sessions share: the settings in force (settings.py: swapped on
reload) and the connection counts. Over a limit a client gets 421 4.7.0 and is closed at
once; sessions already running are not affected.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio
from vsmtp_journal import GroupCommitWriter

from ..config import Config, ListenerConfig, parse_address
from ..mail.body import Flight
from ..plugins import PluginManager
from . import anvil as anvil_mod
from .anvil import Anvil
from .counts import ConnectionCounts
from .refusals import RefusalLog
from .room import InFlight
from .session import Session
from .settings import Peer, SessionSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class Bound:
    listener: str
    host: str
    port: int


def _peer(sockname: object) -> Peer:
    assert isinstance(sockname, tuple)
    return Peer(host=str(sockname[0]), port=int(sockname[1]))


BACKLOG = 1024


def _claim(family: int, host: str, port: int) -> None:
    """Fail with EADDRINUSE if anything listens on (host, port) already. SO_REUSEPORT lets
    sockets of the same user share a port without a word, so a second vsmtp (another
    journal, another directory) would split the mail with the first: a probe without it
    cannot bind where such a listener is, and tells. Our own copies bind after the probe."""
    if port == 0:
        return  # an ephemeral port is ours alone
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT leftovers are no owner
        if family == socket.AF_INET6:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        probe.bind((host, port))
    finally:
        probe.close()


def bind_sockets(config: Config, copies: int) -> list[list[tuple[ListenerConfig, socket.socket]]]:
    """Bind every address of every listener `copies` times with SO_REUSEPORT, one set of
    listening sockets per receiving process: the kernel spreads connections between them.
    Port 0 is resolved by the first copy and the others join it. An address family this
    host lacks (no IPv6 loopback, say) is skipped with a warning; any other failure to bind
    is fatal, as is an address something already listens on (address already in use: a
    second vsmtp must not join the port, see _claim)."""
    sets: list[list[tuple[ListenerConfig, socket.socket]]] = [[] for _ in range(copies)]
    for listener in config.listeners:
        for address in listener.addresses:
            host, port = parse_address(address)
            try:
                family = socket.AF_INET6 if ":" in host else socket.AF_INET
                _claim(family, host, port)
                for sockets in sets:
                    sock = socket.socket(family, socket.SOCK_STREAM)
                    try:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                        if family == socket.AF_INET6:
                            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                        sock.bind((host, port))
                        sock.listen(BACKLOG)
                    except OSError:
                        sock.close()
                        raise
                    port = sock.getsockname()[1]
                    sockets.append((listener, sock))
            except OSError as exc:
                if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                    log.warning("listener %s: cannot bind %s (%s); skipped", listener.name, address, exc.strerror)
                    continue
                raise OSError(exc.errno, f"listener {listener.name}: cannot bind {address}: {exc.strerror}") from exc
    if not sets[0]:
        raise OSError(errno.EADDRNOTAVAIL, "no listener address could be bound")
    return sets


# What accept() may fail with when the machine is short of something (descriptors, memory):
# the listener is fine, the connection waits in the backlog. Anything else is a bug.
_SHORT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
_SHORT_PAUSE = 0.1


async def _accept(listener: trio.SocketListener, handle: Callable[[trio.SocketStream], Awaitable[None]], sessions: trio.Nursery) -> None:
    """Accept connections, a session task for each (trio.serve_listeners does the same, and
    then closes each stream again, forcefully: a cancelled checkpoint, about 25 us a
    connection; here the session's handler closes its own)."""
    async with listener:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _SHORT_OF_RESOURCES:
                    raise
                log.error("cannot accept a connection (%s): trying again in %.1f s", exc.strerror, _SHORT_PAUSE)
                await trio.sleep(_SHORT_PAUSE)
                continue
            sessions.start_soon(handle, stream)


class SmtpService:
    def __init__(self, config: Config, writer: GroupCommitWriter, anvil: Anvil | None = None, plugins: PluginManager | None = None) -> None:
        self.plugins = plugins
        self.writer = writer
        self.sessions: set[Session] = set()
        self.flight = Flight()  # what their bodies hold: each Body keeps it up to date
        self.anvil = anvil or Anvil(ConnectionCounts())  # shared with the other receiving processes, if any
        self.counts = self.anvil.counts
        self.settings = SessionSettings.build(config, plugins, anvil=self.anvil)
        self.refusals = RefusalLog(log, clock=trio.current_time)
        self._listen_scope = trio.CancelScope()
        self._idle = trio.Event()
        self._idle.set()

    def reload(self, settings: SessionSettings) -> None:
        """Use `settings` for new sessions; running sessions keep theirs."""
        old = {(lst.name, lst.role, lst.addresses) for lst in self.settings.config.listeners}
        self.settings = settings
        if old != {(lst.name, lst.role, lst.addresses) for lst in settings.config.listeners}:
            log.warning("listener addresses or roles changed: they take effect at the next restart")

    async def serve(
        self,
        *,
        sockets: list[tuple[ListenerConfig, socket.socket]] | None = None,
        task_status: trio.TaskStatus[list[Bound]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept on the configured addresses, or on `sockets` already bound (bind_sockets)."""
        if sockets is None:
            sockets = bind_sockets(self.settings.config, 1)[0]
        listeners = [(lst, trio.SocketListener(trio.socket.from_stdlib_socket(sock))) for lst, sock in sockets]
        bound = []
        async with trio.open_nursery() as sessions:
            with self._listen_scope:
                async with trio.open_nursery() as accepting:
                    for listener, sock_listener in listeners:
                        host, port = sock_listener.socket.getsockname()[:2]
                        bound.append(Bound(listener=listener.name, host=host, port=port))
                        log.info("listener %s (%s): accepting SMTP on %s port %d", listener.name, listener.role, host, port)
                        accepting.start_soon(_accept, sock_listener, self._handler(listener), sessions)
                    task_status.started(bound)
            for _, sock_listener in listeners:
                await sock_listener.aclose()
            # Listening stopped (shutdown): the sessions nursery waits for the sessions.

    def alone(self) -> bool:
        """Whether at most one session is open in this process: then nothing else would run
        while the journal syncs (GroupCommitWriter.inline)."""
        return len(self.sessions) <= 1

    def bodies_in_flight(self) -> InFlight:
        """The message data the sessions of this process are receiving now."""
        return InFlight(memory=self.flight.memory, octets=self.flight.octets)

    async def shutdown(self, grace: float) -> None:
        """Stop accepting; let open transactions finish within `grace` seconds; 421 the rest."""
        self._listen_scope.cancel()
        deadline = trio.current_time() + grace
        for session in list(self.sessions):
            session.request_shutdown(deadline)
        with trio.move_on_at(deadline + 5):  # a session stuck past its own deadline is cut
            await self._idle.wait()

    def _handler(self, listener: ListenerConfig) -> Callable[[trio.SocketStream], Awaitable[None]]:
        async def handle(stream: trio.SocketStream) -> None:
            try:
                await begin(stream)
            except OSError as exc:
                # Gone before its session began (a reset while it waited to be accepted: its
                # address cannot even be read): its own loss, not the process's.
                log.debug("listener %s: a connection ended before its session began: %s", listener.name, exc)
            finally:
                stream.socket.close()  # the session closed it already, unless it never began

        async def begin(stream: trio.SocketStream) -> None:
            settings = self.settings
            limits = settings.config.limits
            peer = _peer(stream.socket.getpeername())
            exempt = anvil_mod.exempt(peer.host, settings.relay_networks)
            refusal = self.anvil.admit(peer.host, limits, settings.config.anvil, exempt=exempt)  # counted unless refused
            if refusal is not None:
                self.refusals.refused(peer.host, listener.name, refusal)
                with trio.move_on_after(5), contextlib.suppress(trio.BrokenResourceError):
                    await stream.send_all(refusal.to_bytes())
                await trio.aclose_forcefully(stream)
                return
            counted = True

            def release() -> None:
                nonlocal counted
                if counted:
                    counted = False
                    self.anvil.release(peer.host)

            session = Session(
                stream,
                settings=settings,
                listener=listener,
                writer=self.writer,
                peer=peer,
                local=_peer(stream.socket.getsockname()),
                on_last_reply=release,
                stressed=lambda: self.counts.total() * 5 >= limits.max_connections * 4,  # 80% of the slots taken
                in_flight=self.bodies_in_flight,
                flight=self.flight,
            )
            self.sessions.add(session)
            self._idle = trio.Event() if self._idle.is_set() else self._idle
            try:
                await session.converse()
            except Exception:
                log.exception("session %s ended by an unexpected error", session.id)
            finally:
                self.sessions.discard(session)
                release()
                if not self.sessions:
                    self._idle.set()

        return handle
