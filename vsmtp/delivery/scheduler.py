"""The scheduler and its workers.

The scheduler looks at the messages the projection says were touched (and at retries that
fell due), and sends one DeliveryJob per message with its due recipients over a bounded
channel. A recipient stays "in flight" from dispatch until the projection has folded in the
outcome the worker journaled, so nothing is handed out twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import itertools
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import trio
from opentelemetry.trace import INVALID_SPAN, Span
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
from . import bounce, maildir, mbox, remote, stages
from .outcomes import deferred, with_expiry
from .signing import Signing

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryJob:
    queue_id: str
    reverse_path: str
    blob: bytes
    accepted_at: float
    recipients: tuple[tuple[str, int], ...]  # (address, attempts so far)
    recovered: bool  # pending when the process started: a crash may have cut an attempt short
    in_doubt: frozenset[str] = frozenset()  # recipients whose data went out without a final answer
    routes: Mapping[str, policy.Route] = dataclasses.field(default_factory=dict)  # chosen by delivery rules (set_route)
    traceparent: str = ""  # the message's span, which the delivery spans link to (or continue)
    size: int = 0  # octets of the body (0: unknown)
    trace_continued: bool = False


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
            appends = await trio.to_thread.run_sync(partial(planner, self.journal, message, self.config, now=time.time()))
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

    def finished(self, job: DeliveryJob, position: int) -> None:
        flying = self.in_flight.setdefault(job.queue_id, {})
        for address, _ in job.recipients:
            flying[address] = position
        self.projection.touch(job.queue_id)

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


BATCH = 32  # jobs one worker delivers in one thread call
SMALL = 1 << 20  # a body up to this size is read from the journal once for all its recipients


class Worker:
    """Delivers the jobs the scheduler sends. One Worker serves `delivery.workers` loops
    (serve); what they share (limits, resolver, kept connections) is its state."""

    def __init__(self, *, config: Config, journal: Journal, writer: GroupCommitWriter, scheduler: Scheduler) -> None:
        self.config = config
        self.journal = journal
        self.writer = writer
        self.scheduler = scheduler
        self.remote_limit = trio.CapacityLimiter(config.delivery.remote_workers)  # SMTP deliveries at once, in all
        self.domain_limits: dict[str, trio.CapacityLimiter] = {}  # and per destination domain
        self.host_limits = outbound.HostLimits(config.delivery.per_host)  # and per host address
        self.resolver = mx.resolver(config.dns)
        self.connections = outbound.ConnectionCache(idle=config.delivery.connection_idle)  # run() by serve_delivery

    def reload(self, config: Config) -> None:
        """A new configuration: the next jobs use its relay host, DNS servers and limits."""
        self.config = config
        self.resolver = mx.resolver(config.dns)
        self.remote_limit.total_tokens = config.delivery.remote_workers
        self.domain_limits = {}  # deliveries under way keep the limiter they hold
        self.host_limits.per_host = config.delivery.per_host
        self.connections.idle = config.delivery.connection_idle

    async def serve(self, receive: trio.MemoryReceiveChannel[DeliveryJob]) -> None:
        async with receive, trio.open_nursery() as background:
            async for job in receive:
                # Whatever else is waiting goes along in the same thread call: one hand-off and
                # one directory fsync per Maildir for the lot, instead of one per message.
                jobs = [job]
                while len(jobs) < BATCH:
                    try:
                        jobs.append(receive.receive_nowait())
                    except trio.WouldBlock:
                        break
                local = []
                for job in jobs:
                    each = await self._through_rules(job, background) if self.scheduler.stages.active("delivery") else job
                    if each is None:
                        continue
                    mine, by_domain = self._split(each)
                    if mine is not None:
                        local.append(mine)
                    for (domain, relay), sub in by_domain.items():  # one SMTP transaction per domain, in the background
                        background.start_soon(self._deliver_remote, sub, domain, relay)
                if not local:
                    continue
                results = await trio.to_thread.run_sync(self.deliver_batch, local)
                # The outcome is journaled while this worker takes its next job: it rides along
                # with the next commit someone waits for. Losing it in a crash costs nothing but
                # a look into the Maildir (recovered messages check for the file first).
                for each, outcomes in zip(local, results, strict=True):
                    background.start_soon(self._record, each, outcomes)

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
            stages=self.scheduler.stages,
            config=self.config,
        )
        if routed.events:
            background.start_soon(self._record, dataclasses.replace(job, recipients=tuple(routed.settled)), routed.events)
        if not routed.kept:
            return None
        return dataclasses.replace(job, recipients=tuple(routed.kept), routes={**job.routes, **routed.routes})

    def _split(self, job: DeliveryJob) -> tuple[DeliveryJob | None, dict[tuple[str, policy.Smarthost | None], DeliveryJob]]:
        """The job's local recipients as one job, and its remote ones as a job per domain (or
        per host a delivery rule chose)."""
        local: list[tuple[str, int]] = []
        by_domain: dict[tuple[str, policy.Smarthost | None], list[tuple[str, int]]] = {}
        for recipient in job.recipients:
            chosen = job.routes.get(recipient[0])
            if isinstance(chosen, policy.Smarthost):
                by_domain.setdefault((f"[{chosen.host}]:{chosen.port}", chosen), []).append(recipient)
                continue
            domain = chosen.domain if isinstance(chosen, policy.RemoteRoute) else None
            if chosen is None:
                domain = policy.remote_domain(recipient[0], self.config)
            if domain is not None:
                by_domain.setdefault((domain, None), []).append(recipient)
            else:
                local.append(recipient)
        if not by_domain:
            return job, {}
        return (
            dataclasses.replace(job, recipients=tuple(local)) if local else None,
            {domain: dataclasses.replace(job, recipients=tuple(rs)) for domain, rs in by_domain.items()},
        )

    async def _deliver_remote(self, job: DeliveryJob, domain: str, relay: policy.Smarthost | None = None) -> None:
        per_domain = self.domain_limits.setdefault(domain, trio.CapacityLimiter(self.config.delivery.per_domain))
        async with per_domain, self.remote_limit:  # a busy domain waits for itself, not for the others
            try:
                outcomes = await self._remote_outcomes(job, domain, relay)
            except JournalError as exc:  # delivery.started could not be journaled: the data did not go
                reason = f"cannot journal the start of the delivery: {exc}"
                outcomes = [
                    deferred(job.queue_id, a, n, now=time.time(), reason=reason, config=self.config, accepted_at=job.accepted_at)
                    for a, n in job.recipients
                ]
        await self._record(job, outcomes)

    async def _remote_outcomes(self, job: DeliveryJob, domain: str, relay: policy.Smarthost | None) -> list[qe.JournalEvent]:
        return await remote.deliver(
            queue_id=job.queue_id,
            reverse_path=job.reverse_path,
            blob=job.blob,
            accepted_at=job.accepted_at,
            domain=domain,
            recipients=list(job.recipients),
            config=self.config,
            journal=self.journal,
            resolver=self.resolver,
            in_doubt=job.in_doubt,
            before_data=partial(self._started, job.queue_id),
            cache=self.connections,
            host_limits=self.host_limits,
            route=relay,
        )

    async def _started(self, queue_id: str, recipients: list[str], host: str, address: str) -> None:
        """delivery.started, durable before the data goes (a crash after it risks a duplicate)."""
        event = qe.DeliveryStarted(at=time.time(), queue_id=queue_id, recipients=tuple(recipients), host=host, address=address)
        await self.writer.append_group([qe.to_append(event)], durable=True, urgent=True)

    def deliver_batch(self, jobs: list[DeliveryJob]) -> list[list[qe.JournalEvent]]:
        """deliver() each job; the Maildir directories are synced once at the end."""
        results = []
        try:
            with maildir.batch():
                for job in jobs:
                    results.append(with_expiry(self.deliver(job)))
        except OSError as exc:  # a directory could not be synced: none of the renames is sure
            log.warning("cannot sync Maildir directories: %s", exc)
            reason = f"cannot write to the Maildir: {exc}"
            results = [
                [
                    deferred(
                        job.queue_id,
                        o.recipient,
                        dict(job.recipients)[o.recipient],
                        now=o.at,
                        reason=reason,
                        config=self.config,
                        accepted_at=job.accepted_at,
                        transport="maildir",
                    )
                    if isinstance(o, qe.DeliverySucceeded) and o.transport == "maildir"
                    else o
                    for o in outcomes
                ]
                for job, outcomes in zip(jobs, results, strict=True)
            ]
        return results

    async def _record(self, job: DeliveryJob, outcomes: list[qe.JournalEvent]) -> None:
        try:
            # Shielded: what was delivered is journaled even while we are being stopped. One
            # group: the outcomes of one job are committed together or not at all.
            with trio.CancelScope(shield=True):
                positions = await self.writer.append_group([qe.to_append(e) for e in outcomes], durable=True, urgent=False)
            position = positions[-1] if positions else 0
            telemetry.metrics.delivered(outcomes, accepted_at=job.accepted_at)
        except JournalError as exc:
            # The outcome is lost but the message is not: it stays pending and the next
            # attempt finds the Maildir file already there.
            log.error("cannot journal delivery of %s: %s", job.queue_id, exc)
            self.scheduler.recovering(job.queue_id)  # its next attempt looks for the file first
            await trio.sleep(1.0)  # do not spin while the journal cannot take writes
            position = self.journal.last_position()
        self.scheduler.finished(job, position)

    def deliver(self, job: DeliveryJob) -> list[qe.JournalEvent]:
        """Deliver every recipient of the job; return the events that say how it went. A span
        per job when tracing is on, linked to the session that received the message."""
        if not telemetry.enabled():
            return self._deliver(job)
        recipients = {"vsmtp.recipients": len(job.recipients)}
        with traced(telemetry.SPAN_LOCAL, job.queue_id, job.traceparent, job.trace_continued, **recipients) as span:
            outcomes = self._deliver(job)
            statuses = {telemetry.metrics.OUTCOMES.get(type(o), o.TAG) for o in outcomes}
            telemetry.spans.outcome(span, statuses, next((getattr(o, "reason", "") for o in outcomes if hasattr(o, "reason")), ""))
            return outcomes

    def _deliver(self, job: DeliveryJob) -> list[qe.JournalEvent]:
        outcomes: list[qe.JournalEvent] = []
        try:
            body: Callable[[], Iterable[bytes | memoryview]] | None
            if 0 < job.size <= SMALL:  # read once, checked, for all its recipients
                whole = self.journal.blob(job.blob)
                body = None if whole is None else (lambda: (whole,))
            else:  # checked whole in place first, then read a chunk at a time for each recipient
                body = (lambda: self.journal.blob_chunks(job.blob)) if self.journal.check_blob(job.blob) else None
            self._deliver_each(job, body, outcomes)
        except CorruptBlob as exc:  # never delivered altered: held for the operator
            log.error("%s: not delivered, held in the quarantine %r: %s", job.queue_id, CORRUPT, exc)
            outcomes.append(qe.MessageCorrupted(at=time.time(), queue_id=job.queue_id, blob=job.blob, reason=exc.reason))
        return outcomes

    def _deliver_each(
        self, job: DeliveryJob, body: Callable[[], Iterable[bytes | memoryview]] | None, outcomes: list[qe.JournalEvent]
    ) -> None:
        now = time.time()
        for address, attempts in job.recipients:
            route = job.routes.get(address) or policy.route(address, self.config)
            if body is None:
                reason = "message body missing from the journal"
                outcomes.append(qe.DeliveryFailed(at=now, queue_id=job.queue_id, recipient=address, transport="maildir", reason=reason))
                continue
            assert isinstance(route, policy.LocalRoute), "remote recipients go through _deliver_remote"
            try:
                write = self._mbox if route.format == "mbox" else self._maildir
                detail = write(job, address, attempts, route, body)
            except OSError as exc:
                reason = f"cannot write to the {'mbox' if route.format == 'mbox' else 'Maildir'}: {exc}"
                log.warning("%s: %s: %s", job.queue_id, address, reason)
                outcomes.append(
                    deferred(
                        job.queue_id,
                        address,
                        attempts,
                        now=now,
                        reason=reason,
                        config=self.config,
                        accepted_at=job.accepted_at,
                        transport=route.format,
                    )
                )
                continue
            outcomes.append(qe.DeliverySucceeded(at=now, queue_id=job.queue_id, recipient=address, transport=route.format, detail=detail))

    def _mbox(self, job: DeliveryJob, address: str, attempts: int, route: policy.LocalRoute, body: Callable[[], Iterable[Any]]) -> str:
        path = Path(self.config.delivery.mbox.format(user=route.user, domain=route.domain))
        headers = f"Return-Path: <{job.reverse_path}>\r\nDelivered-To: {address}\r\n".encode()
        # Written before a crash or a lost journal record? Our Received header names the queue id.
        if (job.recovered or attempts) and mbox.has_delivery(path, address, job.queue_id):
            log.info("%s: %s was already delivered to %s before a restart", job.queue_id, address, path)
            return str(path)
        offset = mbox.deliver(path, job.reverse_path, [headers, *body()])  # escaped whole
        return f"{path} at offset {offset}"

    def _maildir(self, job: DeliveryJob, address: str, attempts: int, route: policy.LocalRoute, body: Callable[[], Iterable[Any]]) -> str:
        path = Path(self.config.delivery.maildir.format(user=route.user, domain=route.domain))
        name = maildir.file_name(accepted_at=job.accepted_at, queue_id=job.queue_id, recipient=address, hostname=self.config.hostname)
        # Written before? Only possible if a crash (recovered) or a journal failure (a retry)
        # came between the rename and the journal commit; a first attempt skips the look.
        existing = maildir.find(path, name, look_in_cur=job.recovered) if job.recovered or attempts else None
        if existing is not None:
            log.info("%s: %s was already delivered to %s before a restart", job.queue_id, address, existing)
            return str(existing)
        # RFC 5321 4.4: the final delivery adds Return-Path; Delivered-To marks the mailbox.
        headers = f"Return-Path: <{job.reverse_path}>\r\nDelivered-To: {address}\r\n".encode()
        return str(maildir.deliver(path, name, itertools.chain([headers], body())))


def traced(name: str, queue_id: str, traceparent: str, continued: bool, **attributes: Any) -> contextlib.AbstractContextManager[Span]:
    """A span of the delivery process for one message, tied to the message's own span."""
    if not telemetry.enabled():
        return contextlib.nullcontext(INVALID_SPAN)
    context = {"traceparent": traceparent} if traceparent else {}
    return telemetry.spans.delivery(name, context, continued=continued, **{"vsmtp.queue_id": queue_id, **attributes})


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
    send, receive = trio.open_memory_channel[DeliveryJob](config.delivery.workers)
    worker = Worker(config=config, journal=journal, writer=writer, scheduler=scheduler)
    scheduler.reloaded.append(worker.reload)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.connections.serve)
        async with receive:
            for _ in range(config.delivery.workers):
                nursery.start_soon(worker.serve, receive.clone())
        nursery.start_soon(scheduler.serve, send)
        task_status.started(scheduler)
