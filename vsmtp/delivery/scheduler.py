"""The scheduler and its workers.

The scheduler looks at the messages the projection says were touched (and at retries that
fell due), and sends one DeliveryJob per message with its due recipients over a bounded
channel. A recipient stays "in flight" from dispatch until the projection has folded in the
outcome the worker journaled, so nothing is handed out twice.
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial

import trio
from vsmtp_journal import Append, CorruptBlob, GroupCommitWriter, Journal, JournalError

from .. import telemetry
from ..config import Config
from ..net import dns as mx
from ..net import outbound
from ..queue import events as qe
from ..queue import policy
from ..queue.projection import QueueProjection
from ..queue.state import CORRUPT, MessageState
from ..rules.engine import Stages
from . import bounce, outcomes, stages, transports
from .signing import Signing
from .transport import Delivery, DeliveryJob, Result, Services, Transport, traced

log = logging.getLogger(__name__)


# The notices the scheduler queues: kind -> (what plans its records, whether it is still due).
NOTICES: dict[str, tuple[Callable[..., list[Append]], Callable[[MessageState], bool]]] = {
    # every recipient final, and the sender owed a report (failures, or NOTIFY=SUCCESS)
    "bounce": (bounce.plan, lambda message: message.bounce_due),
    # waited delivery.delay_warning with recipients pending, not warned yet
    "delay": (bounce.plan_delay_warning, lambda message: not message.delay_warned and bool(message.pending())),
}


class Scheduler:
    def __init__(
        self,
        projection: QueueProjection,
        *,
        config: Config,
        journal: Journal,
        writer: GroupCommitWriter,
        stages: Stages | None = None,
        signing: Signing | None = None,
    ) -> None:
        self.projection = projection
        self.config = config
        self.journal = journal
        self.writer = writer
        self.stages = stages or Stages()  # the postq and delivery stages (replaced on reload)
        self.signing = signing  # DKIM signing and ARC sealing at postq (replaced on reload)
        # Messages whose postq stage is due, and those it runs for (until the projection shows
        # message.filtered, so a touch meanwhile cannot run it twice).
        self._filter_due: set[str] = set()
        self._filtering: set[str] = set()
        self._filter_limit = trio.CapacityLimiter(max(1, config.delivery.workers))  # postq stages at once
        # Notices (NOTICES) found due, and those being queued: (kind, queue id). One stays
        # "being queued" until the projection shows it done, so a touch meanwhile cannot queue
        # it twice.
        self._notices_due: set[tuple[str, str]] = set()
        self._noticing: set[tuple[str, str]] = set()
        # queue id -> recipient -> None while its attempt runs, then the position of its outcome
        self.in_flight: dict[str, dict[str, int | None]] = {}
        self._retries: list[tuple[float, str]] = []  # heap of (due time, queue id)
        self._recovered = set(projection.state.messages.keys())
        self.reloaded: list[Callable[[Config], None]] = []  # told of a new configuration (the worker)

    def reload(self, config: Config, *, stages: Stages, signing: Signing | None) -> None:
        """SIGHUP: the configuration in force for what is delivered from now on ([delivery],
        [relayhost], [dns], the rules); `delivery.workers` takes effect at the next start."""
        if config.delivery.workers != self.config.delivery.workers:
            log.warning("delivery.workers changes from %d to %d at the next start", self.config.delivery.workers, config.delivery.workers)
        self.config, self.stages, self.signing = config, stages, signing
        for tell in self.reloaded:
            tell(config)

    def due_jobs(self, queue_ids: set[str], *, now: float) -> list[DeliveryJob]:
        jobs = []
        for queue_id in queue_ids:
            message = self.projection.state.messages.get(queue_id)
            if message is None:  # complete (or removed): nothing left to remember
                self._noticing -= {(kind, queue_id) for kind in NOTICES}
                self._filtering.discard(queue_id)
                if all(p is not None for p in self.in_flight.get(queue_id, {}).values()):
                    self.in_flight.pop(queue_id, None)
                    self._recovered.discard(queue_id)
                continue
            job = self._job_for(message, now=now)
            if job is not None:
                jobs.append(job)
        return jobs

    def _job_for(self, message: MessageState, *, now: float) -> DeliveryJob | None:
        if message.held:
            return None  # its release touches it again
        if message.postq:
            self._filter_due.add(message.queue_id)
            return None  # delivered once the post-queue stage has run
        self._filtering.discard(message.queue_id)
        if message.bounce_due:
            self._notices_due.add(("bounce", message.queue_id))
            return None
        self._check_delay(message, now=now)
        position = self.projection.state.position
        flying = self.in_flight.setdefault(message.queue_id, {})
        due = []
        for rcpt in message.pending():
            if rcpt.address in flying:
                outcome = flying[rcpt.address]
                if outcome is None or position < outcome:
                    continue  # still running, or its outcome is not folded in yet
                del flying[rcpt.address]
            if rcpt.next_attempt > now:
                heapq.heappush(self._retries, (rcpt.next_attempt, message.queue_id))
                continue
            due.append((rcpt.address, rcpt.attempts))
            flying[rcpt.address] = None
        if not due:
            return None
        return DeliveryJob(
            queue_id=message.queue_id,
            reverse_path=message.reverse_path,
            blob=message.blob,
            accepted_at=message.accepted_at,
            recipients=tuple(due),
            recovered=message.queue_id in self._recovered,
            in_doubt=frozenset(r.address for r in message.recipients if r.in_doubt),
            traceparent=message.traceparent,
            trace_continued=message.trace_continued,
            size=message.size,
        )

    def _check_delay(self, message: MessageState, *, now: float) -> None:
        """A delay warning is due once the message has waited delivery.delay_warning (0: never)."""
        after = self.config.delivery.delay_warning
        if message.delay_warned:
            self._noticing.discard(("delay", message.queue_id))
            return
        if not after or not message.reverse_path or not message.pending():
            return
        due = message.accepted_at + after
        if due <= now:
            self._notices_due.add(("delay", message.queue_id))
        else:
            heapq.heappush(self._retries, (due, message.queue_id))

    async def _notice(self, kind: str, queue_id: str) -> None:
        """Queue a notice (the DSN, if anyone wants one) with the event that records it, in one
        transaction; the projection then shows it done."""
        planner, still_due = NOTICES[kind]
        message = self.projection.state.messages.get(queue_id)
        if message is None or not still_due(message):
            return
        try:
            plan = partial(planner, self.journal, message, self.config, now=time.time(), signing=self.signing)
            appends = await trio.to_thread.run_sync(plan)  # signing, if any, is RSA: in the thread too
            with trio.CancelScope(shield=True):
                await self.writer.append_group(appends)  # the DSN and its event: both or neither
        except JournalError as exc:
            log.error("cannot queue the %s notice of %s: %s", kind, queue_id, exc)
            await trio.sleep(5.0)
            self._noticing.discard((kind, queue_id))
            self.projection.touch(queue_id)  # try again

    async def _filter(self, queue_id: str) -> None:
        """Run the post-queue stage for a message and journal what it decided (stages.py)."""
        message = self.projection.state.messages.get(queue_id)
        if message is None or not message.postq:
            return
        try:
            async with self._filter_limit:
                with traced(telemetry.SPAN_POSTQ, message.queue_id, message.traceparent, message.trace_continued):
                    appends, settled, exports = await stages.postq(
                        message, journal=self.journal, stages=self.stages, config=self.config, signing=self.signing
                    )
            with trio.CancelScope(shield=True):
                await self.writer.append_group(appends)  # the verdict, edits and message.filtered: all or none
            for save in exports:
                await trio.to_thread.run_sync(save)
        except CorruptBlob as exc:  # the body cannot be trusted: held, not filtered nor delivered
            log.error("%s: held in the quarantine %r: %s", queue_id, CORRUPT, exc)
            corrupted = qe.MessageCorrupted(at=time.time(), queue_id=queue_id, blob=message.blob, reason=exc.reason)
            with trio.CancelScope(shield=True):
                await self.writer.append_group([qe.to_append(corrupted)])
            settled = True
        except (JournalError, LookupError) as exc:
            log.error("%s: cannot run the postq stage: %s", queue_id, exc)
            settled = False
        if not settled:
            await trio.sleep(stages.RETRY)
            self._filtering.discard(queue_id)
            self.projection.touch(queue_id)

    def recovering(self, queue_id: str) -> None:
        """Its last outcome may be missing from the journal: look for delivered files first."""
        self._recovered.add(queue_id)

    def finished(self, queue_id: str, recipients: Iterable[str], position: int) -> None:
        """The outcomes of these recipients are journaled up to `position`."""
        flying = self.in_flight.setdefault(queue_id, {})
        for address in recipients:
            flying[address] = position
        self.projection.touch(queue_id)

    async def serve(self, send: trio.MemorySendChannel[DeliveryJob]) -> None:
        async with send, trio.open_nursery() as noticing:
            while True:
                now = time.time()
                touched = self.projection.take_touched()
                while self._retries and self._retries[0][0] <= now:
                    touched.add(heapq.heappop(self._retries)[1])
                for job in self.due_jobs(touched, now=now):
                    await send.send(job)
                for kind, queue_id in self._notices_due - self._noticing:
                    self._noticing.add((kind, queue_id))
                    noticing.start_soon(self._notice, kind, queue_id)
                self._notices_due.clear()
                for queue_id in self._filter_due - self._filtering:
                    self._filtering.add(queue_id)
                    noticing.start_soon(self._filter, queue_id)
                self._filter_due.clear()
                wait = self._retries[0][0] - time.time() if self._retries else math.inf
                await self.projection.wait_touched(timeout=max(wait, 0.0))


@dataclass(frozen=True, slots=True)
class _Recorded:
    """What became of some recipients of one message: the events that say so."""

    queue_id: str
    recipients: tuple[str, ...]
    events: tuple[qe.JournalEvent, ...]
    accepted_at: float


BATCH = 32  # jobs one worker takes at once: their local deliveries share one thread call


class Worker:
    """Delivers the jobs the scheduler sends. One Worker serves `delivery.workers` loops
    (serve); what they share (the transports, their limits and kept connections) is its
    state. Each job's recipients are grouped by route into Deliveries, each handed to the
    transport of its route's kind (delivery/transport.py); the outcomes are journaled here."""

    def __init__(self, *, config: Config, journal: Journal, writer: GroupCommitWriter, stages: Callable[[], Stages]) -> None:
        self.config = config
        self.journal = journal
        self.writer = writer
        self.stages = stages  # the delivery stage's rules in force (the scheduler's, replaced on reload)
        self.connections = outbound.ConnectionCache(idle=config.delivery.connection_idle)  # run() by serve_delivery
        self.host_limits = outbound.HostLimits(config.delivery.per_host)  # SMTP deliveries at once to one host address
        self.transports = transports.build(self._services(config))
        self.recorded: Callable[[str, Iterable[str], int], None] = lambda queue_id, recipients, position: None
        self.lost: Callable[[str], None] = lambda queue_id: None  # an outcome could not be journaled

    def _services(self, config: Config) -> Services:
        return Services(
            config=config,
            journal=self.journal,
            writer=self.writer,
            resolver=mx.resolver(config.dns),
            connections=self.connections,
            host_limits=self.host_limits,
            started=self._started,
        )

    def reload(self, config: Config) -> None:
        """A new configuration: the next deliveries use its routes, relay host, DNS servers and
        limits (deliveries under way keep what they hold)."""
        self.config = config
        self.host_limits.per_host = config.delivery.per_host
        self.connections.idle = config.delivery.connection_idle
        self.transports = transports.build(self._services(config))

    async def serve(self, receive: trio.MemoryReceiveChannel[DeliveryJob]) -> None:
        async with receive, trio.open_nursery() as background:
            async for job in receive:
                # Whatever else is waiting goes along: the local deliveries of the lot share one
                # thread call and one directory fsync per Maildir, instead of one per message.
                jobs = [job]
                while len(jobs) < BATCH:
                    try:
                        jobs.append(receive.receive_nowait())
                    except trio.WouldBlock:
                        break
                local: dict[str, list[Delivery]] = {}
                for job in jobs:
                    each = await self._through_rules(job, background) if self.stages().active("delivery") else job
                    if each is None:
                        continue
                    for delivery in self.deliveries(each):
                        transport = self.transports[delivery.route.kind]
                        if transport.concurrent:
                            background.start_soon(self._deliver_one, transport, delivery)
                        else:
                            local.setdefault(delivery.route.kind, []).append(delivery)
                for kind, deliveries in local.items():
                    results = await self._deliver(self.transports[kind], deliveries)
                    # Journaled while this worker takes its next jobs, the whole batch as one
                    # group: it rides along with the next commit someone waits for. Losing it
                    # in a crash costs nothing but a look into the mailbox (recovered messages
                    # check for the file first).
                    background.start_soon(self._record_results, deliveries, results)

    def deliveries(self, job: DeliveryJob) -> list[Delivery]:
        """The job's recipients grouped by route (a rule's choice, or policy.route), each group
        cut to what its transport takes at once."""
        groups: dict[tuple[policy.Route, str], list[tuple[str, int]]] = {}
        for recipient in job.recipients:
            chosen = job.routes.get(recipient[0])
            key = (chosen, "rule") if chosen is not None else policy.routed(recipient[0], self.config)
            groups.setdefault(key, []).append(recipient)
        found = []
        for (route, why), recipients in groups.items():
            size = self.transports[route.kind].max_recipients or len(recipients)
            for start in range(0, len(recipients), size):
                found.append(Delivery(job=job, recipients=tuple(recipients[start : start + size]), route=route, routed_by=why))
        return found

    async def _deliver(self, transport: Transport, deliveries: Sequence[Delivery]) -> list[Result]:
        """transport.deliver, whose failures become deferrals (a transport raises only for a bug
        or a journal that takes no writes): nothing is left in flight."""
        try:
            return await transport.deliver(deliveries)
        except JournalError as exc:  # delivery.started could not be journaled: the data did not go
            text = f"cannot journal the start of the delivery: {exc}"
        except Exception as exc:  # a bug in a transport: logged, and the mail waits for a fix
            log.exception("the %s transport failed", transport.kind)
            text = f"internal error in the {transport.kind} transport: {exc}"
        return [Result.all(d, "deferred", text, enhanced="4.3.0") for d in deliveries]

    async def _deliver_one(self, transport: Transport, delivery: Delivery) -> None:
        [result] = await self._deliver(transport, [delivery])
        await self._record_results([delivery], [result])

    async def _through_rules(self, job: DeliveryJob, background: trio.Nursery) -> DeliveryJob | None:
        """The delivery stage (stages.py): what is left to deliver, with the routes rules chose;
        what they settled is recorded in the background (and those recipients finished)."""
        routed = await stages.delivery(
            queue_id=job.queue_id,
            blob=job.blob,
            reverse_path=job.reverse_path,
            accepted_at=job.accepted_at,
            recipients=list(job.recipients),
            journal=self.journal,
            stages=self.stages(),
            config=self.config,
        )
        if routed.events:
            settled = _Recorded(job.queue_id, tuple(a for a, _ in routed.settled), tuple(routed.events), job.accepted_at)
            background.start_soon(self._record, [settled])
        if not routed.kept:
            return None
        return dataclasses.replace(job, recipients=tuple(routed.kept), routes={**job.routes, **routed.routes})

    async def _started(self, queue_id: str, recipients: list[str], host: str, address: str) -> None:
        """delivery.started, durable before the data goes (a crash after it risks a duplicate)."""
        event = qe.DeliveryStarted(at=time.time(), queue_id=queue_id, recipients=tuple(recipients), host=host, address=address)
        await self.writer.append_group([qe.to_append(event)], durable=True, urgent=True)

    async def _record_results(self, deliveries: Sequence[Delivery], results: Sequence[Result]) -> None:
        now = time.time()
        await self._record(
            [
                _Recorded(
                    d.job.queue_id, tuple(a for a, _ in d.recipients), tuple(outcomes.events(d, r, self.config, now=now)), d.job.accepted_at
                )
                for d, r in zip(deliveries, results, strict=True)
            ]
        )

    async def _record(self, recorded: list[_Recorded]) -> None:
        """Journal what became of these recipients, as one group, then tell the scheduler."""
        try:
            # Shielded: what was delivered is journaled even while we are being stopped. One
            # group: the outcomes of one delivery (and of a batch) are committed together or
            # not at all.
            with trio.CancelScope(shield=True):
                positions = await self.writer.append_group(
                    [qe.to_append(e) for r in recorded for e in r.events], durable=True, urgent=False
                )
            position = positions[-1] if positions else 0
            for r in recorded:
                telemetry.metrics.delivered(r.events, accepted_at=r.accepted_at)
        except JournalError as exc:
            # The outcomes are lost but not the messages: they stay pending and the next
            # attempt finds the Maildir file already there.
            for r in recorded:
                log.error("cannot journal delivery of %s: %s", r.queue_id, exc)
                self.lost(r.queue_id)  # its next attempt looks for the file first
            await trio.sleep(1.0)  # do not spin while the journal cannot take writes
            position = self.journal.last_position()
        for r in recorded:
            self.recorded(r.queue_id, r.recipients, position)


async def serve_delivery(
    *,
    config: Config,
    journal: Journal,
    writer: GroupCommitWriter,
    projection: QueueProjection,
    stages: Stages | None = None,
    signing: Signing | None = None,
    task_status: trio.TaskStatus[Scheduler] = trio.TASK_STATUS_IGNORED,
) -> None:
    scheduler = Scheduler(projection, config=config, journal=journal, writer=writer, stages=stages, signing=signing)
    # Room for a full batch per worker: a worker takes what waits (BATCH), and a batch of
    # local deliveries shares one thread call and its syncs, so a channel that held only a
    # job or two per worker would cut every batch short under load.
    send, receive = trio.open_memory_channel[DeliveryJob](config.delivery.workers * BATCH)
    worker = Worker(config=config, journal=journal, writer=writer, stages=lambda: scheduler.stages)
    worker.recorded, worker.lost = scheduler.finished, scheduler.recovering
    scheduler.reloaded.append(worker.reload)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.connections.serve)
        async with receive:
            for _ in range(config.delivery.workers):
                nursery.start_soon(worker.serve, receive.clone())
        nursery.start_soon(scheduler.serve, send)
        task_status.started(scheduler)
