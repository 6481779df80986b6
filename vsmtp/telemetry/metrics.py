"""vsmtp's metrics: the instruments, their histogram buckets, and what records them.

Every name, unit and attribute is listed in docs/telemetry.md (a test checks that the two
agree). Attribute values come from small fixed sets (verbs, reply classes, transports,
outcomes, enhanced status codes): no address, host name or queue id ever becomes an
attribute, so the number of series stays bounded whatever the peers send.
"""

from __future__ import annotations

import bisect
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from ..queue import events as qe
from ..smtp import events as ev
from ..smtp.replies import Reply

if TYPE_CHECKING:  # the SDK is imported where metrics are collected: not at all when nothing reads them
    from opentelemetry.sdk.metrics.export import Metric, MetricReader, MetricsData
    from opentelemetry.sdk.resources import Resource

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


class Buckets:
    """A histogram with explicit buckets kept in plain lists, added to what the SDK collects
    (see `attach`): a record costs a bisect and a few additions under a lock (records come
    from several threads in the delivery process), not the SDK's path for a synchronous
    instrument (attributes hashed, a measurement object, an exemplar offered: about 12 us a
    record here, several per message). Cumulative since the process started; no exemplars."""

    __slots__ = ("_lock", "bounds", "description", "name", "started", "unit", "values")

    def __init__(self, name: str, unit: str, description: str) -> None:
        self.name, self.unit, self.description = name, unit, description
        self.bounds = BUCKETS[name]
        self.values: dict[tuple[tuple[str, Any], ...], list[Any]] = {}  # attributes -> [bucket counts, sum, min, max]
        self.started = time.time_ns()
        self._lock = threading.Lock()

    def record(self, value: float, attributes: tuple[tuple[str, Any], ...] = ()) -> None:
        with self._lock:
            found = self.values.get(attributes)
            if found is None:
                found = self.values[attributes] = [[0] * (len(self.bounds) + 1), 0, value, value]
            found[0][bisect.bisect_left(self.bounds, value)] += 1  # bucket i holds (bounds[i-1], bounds[i]], as OTLP says
            found[1] += value
            if value < found[2]:
                found[2] = value
            elif value > found[3]:
                found[3] = value

    def metric(self) -> Metric | None:
        with self._lock:
            copied = [(attributes, list(counts), total, low, high) for attributes, (counts, total, low, high) in self.values.items()]
        if not copied:
            return None  # as the SDK: no point before the first record
        from opentelemetry.sdk.metrics.export import AggregationTemporality, Histogram, HistogramDataPoint, Metric

        now = time.time_ns()
        points = [
            HistogramDataPoint(dict(attributes), self.started, now, sum(counts), total, counts, self.bounds, low, high)
            for attributes, counts, total, low, high in copied
        ]
        return Metric(self.name, self.description, self.unit, Histogram(points, AggregationTemporality.CUMULATIVE))


HISTOGRAMS = {
    TIME_TO_250: Buckets(TIME_TO_250, "s", "from the end of the message to its reply (checks, rules, journal)"),
    COMMIT_DURATION: Buckets(COMMIT_DURATION, "s", "journal commit latency, from the batch to the sync"),
    COMMIT_RECORDS: Buckets(COMMIT_RECORDS, "{record}", "records per journal commit (group commit)"),
    DELIVERY_LATENCY: Buckets(DELIVERY_LATENCY, "s", "from acceptance to delivery, per recipient delivered"),
}
_TIME_TO_250, _COMMIT_DURATION, _COMMIT_RECORDS, _DELIVERY_LATENCY = HISTOGRAMS.values()
SCOPE_NAME = "vsmtp"  # the meter's scope: the histograms appear beside its instruments


def attach(reader: MetricReader, resource: Resource) -> None:
    """Make `reader` collect the histograms too, whatever it is (the OTLP exporter's, a
    receiving process's snapshots, the Prometheus endpoint's, a test's). The SDK hands a
    reader its collect function once it is registered with a meter provider; this wraps that
    function, the one place every reader's metrics pass through (a private attribute of the
    SDK's MetricReader, checked by tests/telemetry: they read these histograms through each
    kind of reader)."""
    collect: Any = reader._collect

    def with_histograms(self: MetricReader, timeout_millis: float = 10_000) -> MetricsData | None:
        return add_histograms(collect(self, timeout_millis=timeout_millis), resource)

    reader._collect = with_histograms  # type: ignore[assignment]  # the SDK's annotation is not what it calls


def add_histograms(data: MetricsData | None, resource: Resource) -> MetricsData | None:
    from opentelemetry.sdk.metrics.export import MetricsData, ResourceMetrics, ScopeMetrics
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    made = [m for m in (h.metric() for h in HISTOGRAMS.values()) if m is not None]
    if not made:
        return data
    found = list(data.resource_metrics) if data is not None else []
    if not found:
        return MetricsData([ResourceMetrics(resource, [ScopeMetrics(InstrumentationScope(SCOPE_NAME), made, "")], "")])
    first, *rest = found
    scopes = list(first.scope_metrics)
    for n, scope in enumerate(scopes):
        if scope.scope.name == SCOPE_NAME:
            scopes[n] = ScopeMetrics(scope.scope, [*scope.metrics, *made], scope.schema_url)
            break
    else:
        scopes.append(ScopeMetrics(InstrumentationScope(SCOPE_NAME), made, ""))
    return MetricsData([ResourceMetrics(first.resource, scopes, first.schema_url), *rest])


@dataclass(slots=True)
class Instruments:
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
    return Instruments(
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
    key = (type(event), reply.code // 100)
    attributes = _COMMAND_ATTRIBUTES.get(key)
    if attributes is None:  # a few dozen at most: the verbs times the reply classes
        attributes = _COMMAND_ATTRIBUTES[key] = (("smtp.command", VERBS.get(key[0], "OTHER")), ("smtp.reply.class", f"{key[1]}xx"))
    COMMANDS_TALLY.add(1, attributes)


_COMMAND_ATTRIBUTES: dict[tuple[type, int], tuple[tuple[str, Any], ...]] = {}


def message_end(reply: Reply, *, listener: str, size: int, recipients: int, seconds: float) -> None:
    """The reply to the end of a message: accepted (a 250) or refused."""
    if not counting:
        return
    _TIME_TO_250.record(seconds, _REPLY_CLASSES.get(reply.code // 100) or (("smtp.reply.class", reply_class(reply)),))
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


_REPLY_CLASSES = {n: (("smtp.reply.class", f"{n}xx"),) for n in range(2, 6)}


def commit(records: int, seconds: float) -> None:
    if not counting:
        return
    _COMMIT_DURATION.record(seconds)
    _COMMIT_RECORDS.record(records)


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
            _DELIVERY_LATENCY.record(max(0.0, now - accepted_at), (("vsmtp.transport", transport),))


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
