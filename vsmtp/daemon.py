"""What `vsmtp serve` runs: the journal writer, the queue projection, the event observers,
delivery and the SMTP listeners, as sibling tasks of one nursery. Wiring only: behaviour
lives in the modules it starts."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import aclosing
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import trio
from vsmtp_journal import Commit, CorruptRecord, GroupCommitWriter, Journal, doorbell, follow
from vsmtp_journal.store import SALVAGE_HINT

from . import config as config_mod
from . import telemetry
from .config import Config, ListenerConfig
from .errors import VsmtpError
from .net.anvil import Anvil
from .net.server import Bound, SmtpService
from .net.settings import SessionSettings
from .plugins import PluginManager
from .queue import events as qe
from .queue.projection import QueueProjection
from .queue.retention import serve_retention
from .rules.engine import Stages

if TYPE_CHECKING:  # delivery is imported where it runs: a receiving process never loads it (nor DKIM, DANE and their libraries)
    from .delivery import Scheduler
    from .delivery.signing import Signing

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class Running:
    """Handles on a started server, for tests and tools. A receiving process has no projection
    or scheduler; a delivery process (several workers) has no SMTP service."""

    bound: list[Bound]
    journal: Journal
    writer: GroupCommitWriter
    projection: QueueProjection | None
    scheduler: Scheduler | None
    plugins: PluginManager
    smtp: SmtpService | None
    cancel_scope: trio.CancelScope

    async def stop(self, grace: float) -> None:
        """Stop gracefully: no new sessions, open transactions get `grace` seconds, then all ends."""
        if self.smtp is not None:
            await self.smtp.shutdown(grace)
        self.cancel_scope.cancel()

    def reload(self, config: Config) -> None:
        """Use `config` from now on: new sessions get settings built from it, and the postq and
        delivery stages its rules. Everything is built before anything is swapped, so an
        error (ConfigError naming the line, OSError, ValueError, PluginError) leaves the
        configuration in force as it was."""
        stages = Stages.build(config, self.plugins)  # a broken rules file refuses the reload
        settings = SessionSettings.build(config, self.plugins, stages=stages, anvil=self.smtp.anvil) if self.smtp is not None else None
        signing = signing_of(config) if self.scheduler is not None else None  # and so does a broken key
        self.plugins.configure(config.plugin)
        if self.smtp is not None and settings is not None:
            self.smtp.reload(settings)
        if self.scheduler is not None:
            self.scheduler.reload(config, stages=stages, signing=signing)


async def serve(
    config: Config,
    *,
    plugins: PluginManager | None = None,
    receive: bool = True,
    deliver: bool = True,
    sockets: list[tuple[ListenerConfig, socket.socket]] | None = None,
    doorbell_in: int | None = None,
    doorbell_out: int | None = None,
    anvil: Anvil | None = None,
    process: str = "all",
    task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run vsmtp in this process: by default everything (one process). `receive=False` is the
    delivery process of several (workers.py), `deliver=False` a receiving process, accepting on
    `sockets` bound by the supervisor. A receiving process rings `doorbell_out` after each
    commit; the delivery process listens on `doorbell_in` to see those commits at once.
    `anvil` holds the limits the receiving processes share (net/anvil.py). `process` names
    this one in its telemetry ("all", "delivery", "receiver-N")."""
    telemetry.setup(config.telemetry, process=process, journal_path=config.journal.path, serve_prometheus=deliver)
    if plugins is None:
        plugins = PluginManager()
        plugins.load(config.plugins, config.plugin)
    journal = Journal(config.journal.path, max_map_size=config.journal.max_size or None)
    try:
        async with trio.open_nursery() as outer:
            # The writer outlives everything else: services stopping still journal their last words.
            writer = GroupCommitWriter(journal, on_commit=partial(_committed, doorbell_out))
            await outer.start(writer.serve)
            with trio.CancelScope() as services:
                async with trio.open_nursery() as nursery:
                    projection = scheduler = None
                    # Built first: in one process, delivery shares its stages (one load of the rules file).
                    smtp = SmtpService(config, writer, anvil, plugins) if receive else None
                    if smtp is not None and not deliver:
                        writer.inline = smtp.alone  # one session and nothing else here: no thread hand-off per commit
                    if doorbell_in is not None:
                        nursery.start_soon(doorbell.listen, doorbell_in, writer.notice_commits)
                    if deliver:
                        projection = QueueProjection(journal, writer)
                        try:
                            projection.catch_up()
                        except CorruptRecord as exc:  # refuse a damaged journal at start, saying what to run
                            raise VsmtpError(f"journal {config.journal.path} is damaged: {exc}. {SALVAGE_HINT}") from exc
                        log.info(
                            "journal %s: %d records, %d messages pending",
                            config.journal.path,
                            projection.state.position,
                            len(projection.state.messages),
                        )
                        await nursery.start(projection.serve)
                        telemetry.watch_queue(lambda: projection.state, config.journal.path)
                        await nursery.start(projection.serve_checkpoints, config.journal.checkpoint_interval)
                        await nursery.start(serve_retention, journal, writer, projection, config.retention)
                        await nursery.start(_observe, journal, writer, plugins)
                        if config.delivery.enabled:
                            from .delivery import serve_delivery

                            stages = smtp.settings.stages if smtp is not None else Stages.build(config, plugins)  # postq, delivery
                            signing = signing_of(config)  # an unreadable key stops us here, naming the file
                            scheduler = await nursery.start(
                                lambda task_status: serve_delivery(
                                    config=config,
                                    journal=journal,
                                    writer=writer,
                                    projection=projection,
                                    stages=stages,
                                    signing=signing,
                                    task_status=task_status,
                                )
                            )
                    bound: list[Bound] = []
                    if smtp is not None:
                        bound = await nursery.start(lambda task_status: smtp.serve(sockets=sockets, task_status=task_status))
                    task_status.started(
                        Running(
                            bound=bound,
                            journal=journal,
                            writer=writer,
                            projection=projection,
                            scheduler=scheduler,
                            plugins=plugins,
                            smtp=smtp,
                            cancel_scope=services,
                        )
                    )
            outer.cancel_scope.cancel()
    finally:
        journal.close()
        telemetry.shutdown()  # the last spans and metrics (a receiving process's last snapshot)


def signing_of(config: Config) -> Signing | None:
    """The post-queue signer, when the configuration signs or seals (ConfigError names a bad key)."""
    from .delivery.signing import Signing

    return Signing(config) if config.dkim.sign or config.arc.seal is not None else None


@contextlib.contextmanager
def journal_lock(path: str) -> Iterator[None]:
    """Be the only vsmtp serving this journal: two would deliver every message twice (and,
    with SO_REUSEPORT, share the port without a word). Held for as long as the block runs."""
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(directory / "serve.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise VsmtpError(f"another vsmtp (pid {other}) is already serving the journal at {path}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _committed(doorbell_out: int | None, commit: Commit) -> None:
    telemetry.record_commit(commit.records, commit.seconds)
    if doorbell_out is not None:
        doorbell.ring(doorbell_out)


async def _observe(
    journal: Journal,
    writer: GroupCommitWriter,
    plugins: PluginManager,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Hand every event committed from now on to the vsmtp_event observers, in order."""
    start = journal.last_position()
    task_status.started()
    if not plugins.pm.hook.vsmtp_event.get_hookimpls():
        return
    async with aclosing(follow(journal, after=start, writer=writer)) as records:
        async for record in records:
            await plugins.notify_event(qe.decode(record), record.position)


RELOAD_ERRORS = (VsmtpError, OSError, ValueError)  # what a reload may raise; the old configuration stays


@dataclass(frozen=True, slots=True, kw_only=True)
class SignalActions:
    """What a process does on each signal (serve_signals)."""

    reload: Callable[[], None]  # SIGHUP
    stop: Callable[[float], Awaitable[None]]  # the first SIGTERM or SIGINT: stop within the grace
    stop_now: Callable[[], None]  # the second one
    grace: Callable[[], float]  # seconds open transactions have, from the configuration in force


async def serve_signals(signals: AsyncIterator[int], actions: SignalActions, nursery: trio.Nursery) -> None:
    """The one signal loop of every vsmtp process (one process, the supervisor, each receiving
    process): SIGHUP reloads; the first SIGTERM or SIGINT stops gracefully, a second at once."""
    stopping = False
    async for signum in signals:
        name = signal.Signals(signum).name
        if signum == signal.SIGHUP:
            actions.reload()
        elif not stopping:
            stopping = True
            grace = actions.grace()
            log.info("received %s: stopping (open transactions have %.0fs to finish)", name, grace)
            nursery.start_soon(actions.stop, grace)
        else:
            log.warning("received %s again: stopping now", name)
            actions.stop_now()


async def run_until_signalled(config: Config, config_path: str | None = None) -> None:
    """Serve in one process until SIGTERM or SIGINT, then stop gracefully; a second one stops
    at once. SIGHUP reloads the configuration."""
    with journal_lock(config.journal.path), trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            running: Running = await nursery.start(_serve_then_leave, config, nursery.cancel_scope)
            log.info("vsmtp ready (one process, pid %d)", os.getpid())
            await serve_signals(signals, signal_actions(running, config_path), nursery)


def signal_actions(running: Running, config_path: str | None) -> SignalActions:
    """A process that serves SMTP: SIGHUP reloads the file, SIGTERM stops `running`."""
    assert running.smtp is not None
    smtp = running.smtp
    return SignalActions(
        reload=lambda: reload(running, config_path),
        stop=running.stop,
        stop_now=running.cancel_scope.cancel,
        grace=lambda: smtp.settings.config.limits.shutdown_grace,
    )


async def _serve_then_leave(config: Config, scope: trio.CancelScope, task_status: trio.TaskStatus[Running]) -> None:
    await serve(config, task_status=task_status)
    scope.cancel()  # everything has stopped: leave the signal loop too


def reload(running: Running, config_path: str | None) -> None:
    """Re-read the configuration and certificates; keep the old ones on error."""
    try:
        new = config_mod.load(config_path)
        running.reload(new)
    except RELOAD_ERRORS as exc:
        log.error("reload failed, keeping the configuration in force: %s", exc)
        return
    log.info("configuration reloaded from %s", new.source)
