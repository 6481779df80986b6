"""What `vsmtp serve` runs: the journal writer, the queue projection, the event observers,
delivery and the SMTP listeners, as sibling tasks of one nursery. Wiring only: behaviour
lives in the modules it starts."""

from __future__ import annotations

import logging
import signal
from contextlib import aclosing
from dataclasses import dataclass

import trio
from vsmtp_journal import GroupCommitWriter, Journal, follow

from . import config as config_mod
from . import telemetry
from .config import Config
from .delivery import Scheduler, serve_delivery
from .errors import ConfigError
from .net.server import Bound, SmtpService
from .plugins import PluginManager
from .queue import events as qe
from .queue.projection import QueueProjection

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class Running:
    """Handles on a started server, for tests and tools."""

    bound: list[Bound]
    journal: Journal
    writer: GroupCommitWriter
    projection: QueueProjection
    scheduler: Scheduler | None
    plugins: PluginManager
    smtp: SmtpService
    cancel_scope: trio.CancelScope

    async def stop(self, grace: float | None = None) -> None:
        """Stop gracefully: no new sessions, open transactions get `grace` seconds, then all ends."""
        await self.smtp.shutdown(self.smtp.settings.config.limits.shutdown_grace if grace is None else grace)
        self.cancel_scope.cancel()


async def serve(
    config: Config,
    *,
    plugins: PluginManager | None = None,
    task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED,
) -> None:
    telemetry.setup(config.telemetry)
    if plugins is None:
        plugins = PluginManager()
        plugins.load(config.plugins)
    journal = Journal(config.journal.path, max_map_size=config.journal.max_size or None)
    try:
        async with trio.open_nursery() as outer:
            # The writer outlives everything else: services stopping still journal their last words.
            writer = GroupCommitWriter(journal)
            await outer.start(writer.serve)
            with trio.CancelScope() as services:
                async with trio.open_nursery() as nursery:
                    projection = QueueProjection(journal, writer)
                    projection.catch_up()
                    log.info(
                        "journal %s: %d records, %d messages pending",
                        config.journal.path,
                        projection.state.position,
                        len(projection.state.messages),
                    )
                    await nursery.start(projection.run)
                    await nursery.start(_observe, journal, writer, plugins)
                    scheduler = None
                    if config.delivery.enabled:
                        scheduler = await nursery.start(
                            lambda task_status: serve_delivery(
                                config=config, journal=journal, writer=writer, projection=projection, task_status=task_status
                            )
                        )
                    smtp = SmtpService(config, writer)
                    bound = await nursery.start(smtp.serve)
                    log.info("vsmtp ready")
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


async def run_until_signalled(config: Config, config_path: str | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then stop gracefully; a second one stops at once.
    SIGHUP reloads the configuration."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            running: Running = await nursery.start(_serve_then_leave, config, nursery.cancel_scope)
            stopping = False
            async for signum in signals:
                if signum == signal.SIGHUP:
                    reload(running, config_path)
                elif not stopping:
                    stopping = True
                    grace = running.smtp.settings.config.limits.shutdown_grace
                    log.info("received %s: stopping (open transactions have %.0fs to finish)", signal.Signals(signum).name, grace)
                    nursery.start_soon(running.stop, grace)
                else:
                    log.warning("received %s again: stopping now", signal.Signals(signum).name)
                    running.cancel_scope.cancel()


async def _serve_then_leave(config: Config, scope: trio.CancelScope, task_status: trio.TaskStatus[Running]) -> None:
    await serve(config, task_status=task_status)
    scope.cancel()  # everything has stopped: leave the signal loop too


def reload(running: Running, config_path: str | None) -> None:
    """Re-read the configuration and certificates for new sessions; keep the old ones on error."""
    try:
        new = config_mod.load(config_path)
        running.smtp.reload(new)
    except (ConfigError, OSError, ValueError) as exc:
        log.error("reload failed, keeping the configuration in force: %s", exc)
        return
    log.info("configuration reloaded from %s", new.source)
