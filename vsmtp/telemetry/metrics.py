"""vsmtp's metrics: the instruments, their histogram buckets, and what records them.

Every name, unit and attribute is listed in docs/telemetry.md (a test checks that the two
agree). Attribute values come from small fixed sets (verbs, reply classes, transports,
outcomes, enhanced status codes): no address, host name or queue id ever becomes an
attribute, so the number of series stays bounded whatever the peers send.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View

from ..queue import events as qe
from ..smtp import events as ev
from ..smtp.replies import Reply

SESSIONS = "vsmtp.smtp.sessions"
SESSIONS_ACTIVE = "vsmtp.smtp.sessions.active"
COMMANDS = "vsmtp.smtp.commands"
ACCEPTED = "vsmtp.messages.accepted"
REFUSED = "vsmtp.messages.refused"
RECEIVED_BYTES = "vsmtp.messages.received.size"
RECEIVED_RECIPIENTS = "vsmtp.messages.received.recipients"
TIME_TO_250 = "vsmtp.smtp.accept.duration"
COMMIT_DURATION = "vsmtp.journal.commit.duration"
COMMIT_RECORDS = "vsmtp.journal.commit.records"
TLS_HANDSHAKES = "vsmtp.tls.handshakes"
AUTH = "vsmtp.auth.attempts"
DELIVERY_ATTEMPTS = "vsmtp.delivery.attempts"
DELIVERY_LATENCY = "vsmtp.delivery.latency"
QUEUE_MESSAGES = "vsmtp.queue.messages"
QUEUE_OLDEST = "vsmtp.queue.oldest.age"
JOURNAL_SIZE = "vsmtp.journal.size"
JOURNAL_FREE = "vsmtp.journal.free"
EXPORT_FAILURES = "vsmtp.telemetry.export.failures"

# Buckets that fit what they measure (the SDK's default is made for milliseconds).
BUCKETS = {
    TIME_TO_250: (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    COMMIT_DURATION: (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0),
    COMMIT_RECORDS: (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000),
    DELIVERY_LATENCY: (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 86400.0, 5 * 86400.0),
}


def views() -> list[View]:
    return [View(instrument_name=name, aggregation=ExplicitBucketHistogramAggregation(list(b))) for name, b in BUCKETS.items()]


VERBS: dict[type, str] = {
    ev.Helo: "HELO",
    ev.Ehlo: "EHLO",
    ev.MailFrom: "MAIL",
    ev.RcptTo: "RCPT",
    ev.Data: "DATA",
    ev.Bdat: "BDAT",
    ev.BdatLast: "BDAT",
    ev.DataEnd: "DATA_END",  # the end of the message (the dot): its reply is the 250 or the refusal
    ev.StartTls: "STARTTLS",
    ev.Auth: "AUTH",
    ev.AuthResponse: "AUTH",
    ev.Rset: "RSET",
    ev.Noop: "NOOP",
    ev.Quit: "QUIT",
    ev.Vrfy: "VRFY",
    ev.Expn: "EXPN",
    ev.Help: "HELP",
    ev.Invalid: "INVALID",  # unknown, malformed or out of sequence
}


class Tally:
    """A counter kept in a plain dict and read by the SDK when it collects (an observable
    counter): on the SMTP path an increment costs a dict update, not the SDK's aggregation
    (about 3 us a call, several per message). Collection runs in the exporter's thread; it
    copies the dict in one C call, which the GIL makes atomic."""

    __slots__ = ("values",)

    def __init__(self) -> None:
        self.values: dict[tuple[tuple[str, Any], ...], float] = {}

    def add(self, amount: float, attributes: tuple[tuple[str, Any], ...] = ()) -> None:
        self.values[attributes] = self.values.get(attributes, 0) + amount

    def observe(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(value, dict(attributes)) for attributes, value in list(self.values.items())]


@dataclass(slots=True)
class Instruments:
    histograms: dict[str, Any]
    export_failures: Any
    meter: metrics.Meter


# The tallies live as long as the process: a new meter (a reload of the telemetry) reads them on.
SESSIONS_TALLY, ACTIVE_TALLY, COMMANDS_TALLY = Tally(), Tally(), Tally()
ACCEPTED_TALLY, REFUSED_TALLY, BYTES_TALLY, RECIPIENTS_TALLY = Tally(), Tally(), Tally(), Tally()
TLS_TALLY, AUTH_TALLY, ATTEMPTS_TALLY = Tally(), Tally(), Tally()

_COUNTERS = (  # name, tally, unit, description, monotonic
    (SESSIONS, SESSIONS_TALLY, "{session}", "SMTP sessions opened", True),
    (SESSIONS_ACTIVE, ACTIVE_TALLY, "{session}", "SMTP sessions open now", False),
    (COMMANDS, COMMANDS_TALLY, "{command}", "SMTP commands answered, by verb and reply class", True),
    (ACCEPTED, ACCEPTED_TALLY, "{message}", "messages accepted (the 250 to DATA sent)", True),
    (REFUSED, REFUSED_TALLY, "{message}", "messages refused at their end, by reply", True),
    (RECEIVED_BYTES, BYTES_TALLY, "By", "octets of the messages accepted", True),
    (RECEIVED_RECIPIENTS, RECIPIENTS_TALLY, "{recipient}", "recipients of the messages accepted", True),
    (TLS_HANDSHAKES, TLS_TALLY, "{handshake}", "TLS handshakes, by direction and outcome", True),
    (AUTH, AUTH_TALLY, "{attempt}", "SMTP AUTH attempts, by mechanism and outcome", True),
    (DELIVERY_ATTEMPTS, ATTEMPTS_TALLY, "{attempt}", "delivery attempts per recipient, by transport and outcome", True),
)


def _instruments(meter: metrics.Meter) -> Instruments:
    for name, tally, unit, description, monotonic in _COUNTERS:
        make = meter.create_observable_counter if monotonic else meter.create_observable_up_down_counter
        make(name, [tally.observe], unit=unit, description=description)
    histogram = meter.create_histogram
    return Instruments(
        histograms={
            TIME_TO_250: histogram(TIME_TO_250, unit="s", description="from the end of the message to its reply (checks, rules, journal)"),
            COMMIT_DURATION: histogram(COMMIT_DURATION, unit="s", description="journal commit latency, from the batch to the sync"),
            COMMIT_RECORDS: histogram(COMMIT_RECORDS, unit="{record}", description="records per journal commit (group commit)"),
            DELIVERY_LATENCY: histogram(DELIVERY_LATENCY, unit="s", description="from acceptance to delivery, per recipient delivered"),
        },
        export_failures=meter.create_counter(EXPORT_FAILURES, unit="{export}", description="telemetry exports that failed, by signal"),
        meter=meter,
    )


current = _instruments(metrics.NoOpMeterProvider().get_meter("vsmtp"))
counting = False  # a meter reads the tallies: off, the recording functions return at once


def install(meter: metrics.Meter | None) -> None:
    """Record on `meter` from now on (None: the API's no-op)."""
    global current, counting
    current = _instruments(meter if meter is not None else metrics.NoOpMeterProvider().get_meter("vsmtp"))
    counting = meter is not None


# -- what records them ---------------------------------------------------------------------


def reply_class(reply: Reply) -> str:
    return f"{reply.code // 100}xx"


def command(event: object, reply: Reply) -> None:
    if not counting:
        return
    COMMANDS_TALLY.add(1, (("smtp.command", VERBS.get(type(event), "OTHER")), ("smtp.reply.class", f"{reply.code // 100}xx")))


def message_end(reply: Reply, *, listener: str, size: int, recipients: int, seconds: float) -> None:
    """The reply to the end of a message: accepted (a 250) or refused."""
    if not counting:
        return
    current.histograms[TIME_TO_250].record(seconds, {"smtp.reply.class": reply_class(reply)})
    where = (("vsmtp.listener", listener),)
    if reply.code == 250:
        ACCEPTED_TALLY.add(1, where)
        BYTES_TALLY.add(size, where)
        RECIPIENTS_TALLY.add(recipients, where)
    else:
        REFUSED_TALLY.add(1, (*where, ("smtp.reply.code", reply.code), ("smtp.status", reply.enhanced or "")))


def session(listener: str, delta: int) -> None:
    """A session opened (+1) or closed (-1)."""
    if not counting:
        return
    where = (("vsmtp.listener", listener),)
    if delta > 0:
        SESSIONS_TALLY.add(1, where)
    ACTIVE_TALLY.add(delta, where)


def tls_handshake(direction: str, ok: bool) -> None:
    if not counting:
        return
    TLS_TALLY.add(1, (("vsmtp.direction", direction), ("vsmtp.outcome", "ok" if ok else "failed")))


def journaled(event: qe.JournalEvent) -> None:
    """What a session journals and a metric counts: AUTH's outcome."""
    if not counting:
        return
    if isinstance(event, qe.Authenticated):
        AUTH_TALLY.add(1, (("vsmtp.mechanism", event.mechanism), ("vsmtp.outcome", "success")))
    elif isinstance(event, qe.AuthFailed):
        AUTH_TALLY.add(1, (("vsmtp.mechanism", event.mechanism or "none"), ("vsmtp.outcome", "failure")))


def commit(records: int, seconds: float) -> None:
    current.histograms[COMMIT_DURATION].record(seconds)
    current.histograms[COMMIT_RECORDS].record(records)


# A delivery outcome event as a word (metrics, and the delivery spans' vsmtp.statuses).
OUTCOMES = {qe.DeliverySucceeded: "delivered", qe.DeliveryDeferred: "deferred", qe.DeliveryFailed: "failed"}


def delivered(outcomes: Iterable[qe.JournalEvent], *, accepted_at: float) -> None:
    """A job's outcomes, as the delivery process journals them."""
    if not counting:
        return
    now = time.time()
    for outcome in outcomes:
        kind = OUTCOMES.get(type(outcome))
        if kind is None:
            continue
        transport = getattr(outcome, "transport", "")
        ATTEMPTS_TALLY.add(1, (("vsmtp.transport", transport), ("vsmtp.outcome", kind)))
        if kind == "delivered":
            current.histograms[DELIVERY_LATENCY].record(max(0.0, now - accepted_at), {"vsmtp.transport": transport})


def export_failed(signal: str) -> None:
    current.export_failures.add(1, {"vsmtp.signal": signal})


# -- gauges of the delivery process ---------------------------------------------------------


def watch_queue(state: Callable[[], Any], journal_path: str) -> None:
    """Gauges read when metrics are collected (in the exporter's thread): the queue by state
    and its oldest message's age, from the projection; the journal's size and free space."""
    meter = current.meter

    def depth(options: CallbackOptions) -> Iterable[Observation]:
        counts = dict.fromkeys(("active", "deferred", "held", "quarantined"), 0)
        now = time.time()
        for message in state().messages.values():
            if message.quarantine:
                counts["quarantined"] += 1
            elif message.held:
                counts["held"] += 1
            elif any(r.status == "pending" and r.next_attempt > now for r in message.recipients):
                counts["deferred"] += 1
            else:
                counts["active"] += 1
        return [Observation(n, {"vsmtp.state": name}) for name, n in counts.items()]

    def oldest(options: CallbackOptions) -> Iterable[Observation]:
        messages = state().messages
        first = min((m.accepted_at for m in messages.values()), default=None)
        return [Observation(0.0 if first is None else max(0.0, time.time() - first))]

    def size(options: CallbackOptions) -> Iterable[Observation]:
        try:
            return [Observation(os.stat(os.path.join(journal_path, "data.mdb")).st_size)]
        except OSError:
            return []

    def free(options: CallbackOptions) -> Iterable[Observation]:
        try:
            fs = os.statvfs(journal_path)
        except OSError:
            return []
        return [Observation(fs.f_bavail * fs.f_frsize)]

    meter.create_observable_gauge(QUEUE_MESSAGES, [depth], unit="{message}", description="messages in the queue, by state")
    meter.create_observable_gauge(QUEUE_OLDEST, [oldest], unit="s", description="age of the oldest message in the queue")
    meter.create_observable_gauge(JOURNAL_SIZE, [size], unit="By", description="size of the journal's data file")
    meter.create_observable_gauge(JOURNAL_FREE, [free], unit="By", description="free space on the journal's filesystem")
