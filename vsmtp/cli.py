"""The `vsmtp` command: serve, and the operator's tools over the journal.

    vsmtp serve [--config FILE]
    vsmtp journal tail [-n N] [-f] [--json]
    vsmtp journal show POSITION [--json]
    vsmtp journal export [--format jsonl] [--since TIME] [--message ID]
    vsmtp journal export --format eml|json --message ID
    vsmtp journal stats [--json]
    vsmtp journal verify [--json]
    vsmtp journal rebuild [--write] [--json]
    vsmtp journal salvage DIRECTORY [--json]   every readable record and body into a fresh journal
    vsmtp trace ID [--json]             ID: a queue id or a Message-ID
    vsmtp queue list [--quarantine NAME] [--json] | stats [--json] | show ID [--json] | hold ID | release ID | remove ID | retry ID|--all
    vsmtp plugins list [--json]
    vsmtp rules test RULES.py [--since TIME] [--json]
    vsmtp config show [--config FILE]
    vsmtp auth hash [USER]              a password file line (the password from the terminal or stdin)
    vsmtp dkim keygen DOMAIN SELECTOR [--algorithm A] [--key FILE]
    vsmtp dmarc report --since TIME [--until TIME] [--domain D] [--output DIR] [--send] [--json]
    vsmtp tlsrpt report --day YYYY-MM-DD [--domain D] [--send]   SMTP TLS reports (RFC 8460), JSON

Every command reads the same configuration as the daemon, so run from the daemon's
directory with no arguments it finds the daemon's journal.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import trio
from vsmtp_journal import Journal, JournalError, Record
from vsmtp_journal import verify as verify_journal

from . import config as config_mod
from .errors import VsmtpError
from .queue import events as qe
from .queue import history, projection
from .queue import inspect as queue_inspect
from .queue import state as qstate


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        config = config_mod.load(args.config)
        return int(args.func(args, config) or 0)
    except (VsmtpError, JournalError) as exc:
        print(f"vsmtp: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `vsmtp journal export | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:
        print(f"vsmtp: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vsmtp", description="An event-sourced mail transfer agent.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", "-c", metavar="FILE", help="TOML configuration (default: the embedded one)")
    sub = parser.add_subparsers(metavar="COMMAND")

    def command(group: Any, name: str, func: Any, text: str, *, json: bool = False) -> argparse.ArgumentParser:
        """A subcommand that reads the configuration; `json` adds --json."""
        made: argparse.ArgumentParser = group.add_parser(name, parents=[common], help=text)
        if json:
            made.add_argument("--json", action="store_true", help="for scripts: JSON instead of text")
        made.set_defaults(func=func)
        return made

    serve = command(sub, "serve", _serve, "run the MTA until SIGTERM/SIGINT")
    serve.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])

    journal = sub.add_parser("journal", help="read the journal").add_subparsers(metavar="ACTION")
    tail = command(journal, "tail", _journal_tail, "the last events, one line each", json=True)
    tail.add_argument("-n", type=int, default=50, metavar="N", help="how many events (default 50; 0 for all)")
    tail.add_argument("-f", "--follow", action="store_true", help="then print new events as they are committed (Ctrl-C stops)")
    command(journal, "show", _journal_show, "one event, whole", json=True).add_argument("position", type=int)
    export = command(journal, "export", _journal_export, "events as JSON lines, for other tools")
    export.add_argument(
        "--format", choices=["jsonl", "eml", "json"], default="jsonl", help="jsonl: events; eml, json: the message itself (with --message)"
    )
    export.add_argument("--since", type=_parse_time, metavar="TIME", help="ISO 8601 (2026-11-24T20:00:00Z) or seconds since the epoch")
    export.add_argument("--message", metavar="ID", help="only the history of this message (queue id or Message-ID)")
    command(journal, "stats", _journal_stats, "size, records per tag, oldest and newest", json=True)
    command(journal, "verify", _journal_verify, "check positions, records and blobs; exit 1 if damaged", json=True)
    rebuild = command(journal, "rebuild", _journal_rebuild, "fold the queue state from the start; compare with the checkpoint", json=True)
    salvaging = command(journal, "salvage", _journal_salvage, "copy every readable record and body into a fresh journal", json=True)
    salvaging.add_argument("directory", metavar="DIRECTORY", help="where to write the fresh journal (new or empty)")
    rebuild.add_argument("--write", action="store_true", help="store the rebuilt state as the newest checkpoint")

    trace = command(sub, "trace", _trace, "the whole life of one message, as a timeline", json=True)
    trace.add_argument("id", metavar="ID", help="a queue id or a Message-ID")

    queue = sub.add_parser("queue", help="the messages waiting for delivery, and what to do with them").add_subparsers(metavar="ACTION")
    listing = command(queue, "list", _queue_list, "id, age, size, sender, pending recipients, last error", json=True)
    listing.add_argument("--quarantine", metavar="NAME", help="only the messages in this quarantine ('*': in any)")
    command(queue, "stats", _queue_stats, "pending recipients by domain and age (like qshape)", json=True)
    command(queue, "show", _queue_show, "one message: envelope, each recipient, headers", json=True).add_argument("id", metavar="ID")
    for action, text in (
        ("hold", "deliver nothing of it until released"),
        ("release", "let a held message be delivered again"),
        ("remove", "take it out of the queue, undelivered (its history stays)"),
        ("retry", "try its pending recipients now"),
    ):
        acting = command(queue, action, _queue_act, text)
        acting.add_argument("id", metavar="ID", nargs="?")
        if action == "retry":
            acting.add_argument("--all", action="store_true", help="every message in the queue")
        acting.set_defaults(action=action)

    plugins = sub.add_parser("plugins", help="installed and loaded plugins").add_subparsers(metavar="ACTION")
    command(plugins, "list", _plugins_list, "installed plugins, their versions, hooks, and which the configuration loads", json=True)

    rules = sub.add_parser("rules", help="the rules file").add_subparsers(metavar="ACTION")
    testing = command(rules, "test", _rules_test, "replay recorded sessions through a rules file; print changed verdicts", json=True)
    testing.add_argument("rules", metavar="RULES.py", help="the rules file to try (nothing is sent or changed)")
    testing.add_argument("--since", type=_parse_time, default=0.0, metavar="TIME", help="only sessions opened since (ISO 8601 or epoch)")

    config = sub.add_parser("config", help="the configuration").add_subparsers(metavar="ACTION")
    command(config, "show", _config_show, "print the effective configuration")

    auth = sub.add_parser("auth", help="SMTP AUTH users").add_subparsers(metavar="ACTION")
    hashing = command(auth, "hash", _auth_hash, "hash a password for auth.passwords (asked twice, or one line from stdin)")
    hashing.add_argument("user", metavar="USER", nargs="?", help="print a whole 'USER:hash' line")

    dkim = sub.add_parser("dkim", help="DKIM signing keys").add_subparsers(metavar="ACTION")
    keygen = command(dkim, "keygen", _dkim_keygen, "write a new signing key (0600) and print the TXT record to publish")
    keygen.add_argument("domain", metavar="DOMAIN")
    keygen.add_argument("selector", metavar="SELECTOR")
    keygen.add_argument("--algorithm", choices=["rsa-sha256", "ed25519-sha256"], default="rsa-sha256")
    keygen.add_argument("--bits", type=int, default=2048, help="RSA key size (default 2048)")
    keygen.add_argument("--key", metavar="FILE", help="where to write the key (default var/dkim/SELECTOR.DOMAIN.key)")

    dmarc = sub.add_parser("dmarc", help="DMARC aggregate reports").add_subparsers(metavar="ACTION")
    reporting = command(dmarc, "report", _dmarc_report, "write the aggregate reports of a period from the journal", json=True)
    reporting.add_argument("--since", type=_parse_time, required=True, metavar="TIME", help="ISO 8601 or seconds since the epoch")
    reporting.add_argument("--until", type=_parse_time, metavar="TIME", help="end of the period, exclusive (default: now)")
    reporting.add_argument("--domain", default="", help="only this policy domain's report")
    reporting.add_argument("--output", default=".", metavar="DIR", help="where to write the .xml.gz files (default .)")
    reporting.add_argument("--send", action="store_true", help="also mail each report to its rua addresses (queued in the journal)")

    tlsrpt = sub.add_parser("tlsrpt", help="SMTP TLS reports (RFC 8460)").add_subparsers(metavar="ACTION")
    tls_report = command(tlsrpt, "report", _tlsrpt_report, "the TLS reports of one UTC day, one per destination domain, from the journal")
    tls_report.add_argument("--day", required=True, metavar="YYYY-MM-DD", help="the UTC day")
    tls_report.add_argument("--domain", default="", help="only this destination domain's report")
    tls_report.add_argument("--send", action="store_true", help="also send each report to its domain's rua (mailto: queued, https: posted)")
    return parser


def _serve(args: argparse.Namespace, config: config_mod.Config) -> int:
    from .daemon import run_until_signalled
    from .telemetry import logs

    logs.configure(args.log_level, form=config.telemetry.log_format)
    logging.getLogger("vsmtp").info("configuration: %s", config.source)
    from .workers import settle_heap

    settle_heap()
    try:
        if config.workers == 0:
            trio.run(run_until_signalled, config, args.config)
        else:
            from .workers import Supervisor

            trio.run(Supervisor(config, args.config, log_level=args.log_level).serve)
    except BaseExceptionGroup as group:
        # A service that could not start (a bad key, a damaged journal, a port in use) ends
        # the nursery it ran in: say why in one line, as for any other error of the command.
        known = [e for e in _leaves(group) if isinstance(e, VsmtpError | JournalError | OSError)]
        if not known:
            raise
        for exc in known:
            print(f"vsmtp: {exc}", file=sys.stderr)
        return 1
    return 0


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found += _leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc]
    return found


def _journal_tail(args: argparse.Namespace, config: config_mod.Config) -> int:
    with Journal(config.journal.path, readonly=True) as journal:
        last = journal.last_position()
        after = 0 if args.n <= 0 else max(last - args.n, 0)
        for record in journal.read(after):
            after = record.position
            print(format_json(record) if args.json else format_line(record), flush=args.follow)
        while args.follow:  # until Ctrl-C: poll, as a reader in another process must
            time.sleep(0.2)
            for record in journal.read(after):
                after = record.position
                print(format_json(record) if args.json else format_line(record), flush=True)
    return 0


def _journal_show(args: argparse.Namespace, config: config_mod.Config) -> int:
    with Journal(config.journal.path, readonly=True) as journal:
        record = journal.get(args.position)
    if record is None:
        print(f"vsmtp: no record at position {args.position}", file=sys.stderr)
        return 1
    if args.json:
        print(format_json(record))
        return 0
    payload = record_dict(record)["payload"]
    print(f"position {record.position}\ntag      {record.tag}\nversion  {record.version}")
    for key, value in payload.items() if isinstance(payload, dict) else []:
        shown = _iso(value) if key in ("at", "retry_at") and isinstance(value, int | float) else value
        print(f"  {key}: {json.dumps(shown, default=_jsonable, ensure_ascii=False)}")
    return 0


def _journal_export(args: argparse.Namespace, config: config_mod.Config) -> int:
    if args.format in ("eml", "json"):
        return _message_export(args, config)
    with Journal(config.journal.path, readonly=True) as journal:
        if args.message:
            found = history.trace(journal, args.message)
            if found is None:
                print(f"vsmtp: no message {args.message!r} in the journal", file=sys.stderr)
                return 1
            records: Iterable[Record] = found.records
        else:
            records = journal.read(0)
        for record in records:
            at = record.payload.get("at") if isinstance(record.payload, dict) else None
            if args.since is not None and isinstance(at, int | float) and at < args.since:
                continue
            print(format_json(record))
    return 0


def _message_export(args: argparse.Namespace, config: config_mod.Config) -> int:
    from .mail import export

    if not args.message:
        print(f"vsmtp: --format {args.format} exports one message: add --message ID", file=sys.stderr)
        return 2
    with Journal(config.journal.path, readonly=True) as journal:
        found = history.as_delivered(journal, args.message)
    if found is None:
        print(f"vsmtp: no message {args.message!r} with its body in the journal", file=sys.stderr)
        return 1
    accepted, raw = found
    if args.format == "eml":
        sys.stdout.buffer.write(raw)
        sys.stdout.buffer.flush()
    else:
        print(json.dumps(export.as_json(export.Envelope.of(accepted), raw), ensure_ascii=False))
    return 0


def _journal_stats(args: argparse.Namespace, config: config_mod.Config) -> int:
    with Journal(config.journal.path, readonly=True) as journal:
        sizes = journal.stats()
        tags: Counter[str] = Counter()
        oldest = newest = None
        for record in journal.read(0):
            tags[record.tag] += 1
            at = record.payload.get("at") if isinstance(record.payload, dict) else None
            if isinstance(at, int | float):
                oldest = at if oldest is None else min(oldest, at)
                newest = at if newest is None else max(newest, at)
    result = {**sizes, "tags": dict(sorted(tags.items())), "oldest": oldest, "newest": newest}
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"journal   {config.journal.path}")
    print(f"file      {sizes['file_bytes']:,} bytes ({sizes['used_bytes']:,} in use, map {sizes['map_bytes']:,})")
    print(f"records   {sizes['records']:,}, blobs {sizes['blobs']:,}")
    print(f"oldest    {_iso(oldest) if oldest else '-'}\nnewest    {_iso(newest) if newest else '-'}")
    for tag, count in sorted(tags.items()):
        print(f"  {tag:<20} {count:>10,}")
    return 0


def _journal_verify(args: argparse.Namespace, config: config_mod.Config) -> int:
    def blobs_of(record: Record) -> list[bytes]:
        if record.tag in (qe.MessageAccepted.TAG, qe.MessageModified.TAG) and isinstance(record.payload, dict):
            blob = record.payload.get("blob")
            return [blob] if isinstance(blob, bytes) else []
        return []

    def check(record: Record) -> str | None:
        try:
            qe.decode(record)
        except (LookupError, TypeError, ValueError) as exc:
            return f"does not read as an event: {exc}"
        return None

    with Journal(config.journal.path, readonly=True) as journal:
        report = verify_journal(journal, blobs_of=blobs_of, check_record=check)
    if args.json:
        problems = [{"position": p.position, "problem": p.what} for p in report.problems]
        print(json.dumps({"clean": report.clean, "records": report.records, "blobs": report.blobs_checked, "problems": problems}))
    else:
        for problem in report.problems:
            print(f"{config.journal.path}: {problem}")
        verdict = "clean" if report.clean else f"{len(report.problems)} problem(s)"
        print(f"{config.journal.path}: {report.records} records, {report.blobs_checked} blobs checked: {verdict}")
    return 0 if report.clean else 1


def _journal_salvage(args: argparse.Namespace, config: config_mod.Config) -> int:
    from vsmtp_journal import salvage

    report = salvage(config.journal.path, args.directory)
    if args.json:
        lost = [{"position": p, "why": why} for p, why in report.lost_records]
        blobs = [{"blob": k.decode(errors="replace"), "why": why} for k, why in report.lost_blobs]
        summary = {"records": report.records, "blobs": report.blobs, "snapshots": report.snapshots, "index_keys": report.index_keys}
        print(json.dumps({**summary, "lost_records": lost, "lost_blobs": blobs, "damage": report.damage}))
        return 0
    for position, why in report.lost_records:
        print(f"lost: record at position {position} ({why}); kept as a journal.lost record")
    for key, why in report.lost_blobs:
        print(f"lost: blob {key.decode(errors='replace')!r} ({why})")
    for damage in report.damage:
        print(f"damaged: {damage}")
    print(
        f"salvaged into {args.directory}: {report.records} records, {report.blobs} blobs, {report.snapshots} snapshots, "
        f"{report.index_keys} index keys; lost {len(report.lost_records)} records and {len(report.lost_blobs)} blobs"
    )
    print(f"to use it: stop vsmtp, move {config.journal.path} aside, move {args.directory} to {config.journal.path}, start vsmtp")
    return 0


def _journal_rebuild(args: argparse.Namespace, config: config_mod.Config) -> int:
    with Journal(config.journal.path, readonly=not args.write) as journal:
        started = time.monotonic()
        rebuilt = projection.rebuild(journal)
        seconds = time.monotonic() - started
        checkpoint = projection.latest_checkpoint(journal)
        live = None if checkpoint is None else qstate.fold(checkpoint, journal.read(checkpoint.position))
        if args.write:
            projection.write_checkpoint(journal, rebuilt)
        horizon = journal.horizon()
    matches = None if live is None else live == rebuilt
    result = {
        "from": horizon,
        "to": rebuilt.position,
        "seconds": round(seconds, 3),
        "pending": len(rebuilt.messages),
        "accepted": rebuilt.accepted,
        "completed": rebuilt.completed,
        "checkpoint": None if checkpoint is None else checkpoint.position,
        "matches": matches,
        "written": args.write,
    }
    if args.json:
        print(json.dumps(result))
    else:
        start = "position 0" if not horizon else f"the snapshot at position {horizon} (older records purged)"
        print(f"rebuilt from {start} to position {rebuilt.position} in {seconds:.2f}s: {len(rebuilt.messages)} messages pending")
        if checkpoint is None:
            print("no checkpoint to compare with")
        else:
            verdict = "matches" if matches else "DIFFERS from"
            print(f"the rebuilt state {verdict} the checkpoint at position {checkpoint.position} plus the records after it")
        if args.write:
            print(f"written as the checkpoint at position {rebuilt.position}")
    return 1 if matches is False else 0


def trace_link(config: config_mod.Config, trace_id: str) -> str:
    """telemetry.trace_url for this trace, or "" (no URL configured, or no trace)."""
    return config.telemetry.trace_url.replace("{trace_id}", trace_id) if trace_id and config.telemetry.trace_url else ""


def _trace(args: argparse.Namespace, config: config_mod.Config) -> int:
    with Journal(config.journal.path, readonly=True) as journal:
        found = history.trace(journal, args.id)
    if found is None:
        print(f"vsmtp: no message {args.id!r} in the journal (give a queue id or a Message-ID)", file=sys.stderr)
        return 1
    if args.json:
        print(
            json.dumps(
                {
                    "queue_id": found.queue_id,
                    "message_id": found.message_id,
                    "trace_id": found.trace_id,
                    "trace_url": trace_link(config, found.trace_id),
                    "events": [record_dict(r) for r in found.records],
                },
                default=_jsonable,
            )
        )
        return 0
    print(f"message {found.queue_id}  Message-ID {found.message_id or '-'}  trace {found.trace_id or '-'}")
    if trace_link(config, found.trace_id):
        print(f"  {trace_link(config, found.trace_id)}")
    start = next((r.payload["at"] for r in found.records if isinstance(r.payload, dict) and "at" in r.payload), 0.0)
    for record in found.records:
        at = record.payload.get("at", start) if isinstance(record.payload, dict) else start
        offset = f"+{at - start:.3f}s"
        print(f"  {_iso(at)} {offset:<10} {record.tag:<19} {qe.decode(record).describe()}")
    return 0


def _parse_time(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a time: {text!r} (use 2026-11-24T20:00:00Z or epoch seconds)") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return parsed.timestamp()


def format_line(record: Record) -> str:
    """'#12 2026-11-24T20:10:00.123Z session.opened session_id=... peer_host=...'"""
    event = qe.decode(record)
    at = getattr(event, "at", None)
    when = _iso(at) if isinstance(at, int | float) else "-"
    return f"#{record.position} {when} {record.tag} {event.describe()}"


def record_dict(record: Record) -> dict[str, Any]:
    """A record as plain data: position, tag, version and its payload (upcast to the current version)."""
    event = qe.decode(record)
    payload = event.to_payload() if isinstance(event, qe.JournalEvent) else event.payload
    return {"position": record.position, "tag": record.tag, "version": record.version, "payload": payload}


def format_json(record: Record) -> str:
    return json.dumps(record_dict(record), default=_jsonable)


def _jsonable(value: object) -> object:
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _iso(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, tz=datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _queue_list(args: argparse.Namespace, config: config_mod.Config) -> int:
    with Journal(config.journal.path, readonly=True) as journal:
        state = queue_inspect.current(journal)
    now = time.time()
    messages = sorted(state.messages.values(), key=lambda m: m.accepted_at)
    if args.quarantine is not None:
        messages = [m for m in messages if m.quarantine and args.quarantine in ("*", m.quarantine)]
    rows = [queue_inspect.summary(m, now=now) for m in messages]
    if args.json:
        print(json.dumps(rows))
        return 0
    for row in rows:
        held = f" (quarantine {row['quarantine']})" if row["quarantine"] else " (held)" if row["held"] else ""
        print(f"{row['queue_id']}{held}  {_age(row['age'])}  {row['size']} bytes  from <{row['sender']}>")
        for address in row["pending"]:
            error = row["errors"].get(address, "")
            print(f"    to {address}" + (f"  ({error})" if error else ""))
    print(f"{len(rows)} message(s) in the queue")
    return 0


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def _queue_stats(args: argparse.Namespace, config: config_mod.Config) -> int:
    with Journal(config.journal.path, readonly=True) as journal:
        shaped = queue_inspect.shape(queue_inspect.current(journal), now=time.time())
    if args.json:
        print(json.dumps(shaped))
        return 0
    buckets = shaped["buckets"]
    rows = [("", "T", *buckets)]
    totals = [0] * len(buckets)
    for domain, row in shaped["domains"].items():
        counts = [row[b] for b in buckets]
        totals = [t + c for t, c in zip(totals, counts, strict=True)]
        rows.append((domain, str(sum(counts)), *map(str, counts)))
    rows.insert(1, ("TOTAL", str(sum(totals)), *map(str, totals)))
    width = max(len(r[0]) for r in rows)
    for r in rows:
        print(f"{r[0]:>{width}} " + " ".join(f"{c:>5}" for c in r[1:]))
    return 0


def _queue_show(args: argparse.Namespace, config: config_mod.Config) -> int:
    with Journal(config.journal.path, readonly=True) as journal:
        message = queue_inspect.current(journal).messages.get(args.id)
        if message is None:
            print(f"vsmtp: {args.id} is not in the queue", file=sys.stderr)
            return 1
        shown = queue_inspect.details(journal, message, now=time.time())
    if args.json:
        print(json.dumps(shown))
        return 0
    print(f"message {shown['queue_id']}{' (held)' if shown['held'] else ''}  {shown['size']} bytes, queued {_age(shown['age'])} ago")
    print(f"  from <{shown['sender']}>")
    for r in shown["recipients"]:
        error = f"  {r['last_error']}" if r["last_error"] else ""
        route = f", by {r['route']} ({r['routed_by']})" if r["route"] else ""
        print(f"  to <{r['address']}>  {r['status']}, {r['attempts']} attempt(s){route}{error}")
    for name, value in shown["headers"]:
        print(f"  | {name}: {value}")
    return 0


def _queue_act(args: argparse.Namespace, config: config_mod.Config) -> int:
    if getattr(args, "all", False) == bool(args.id):
        print(f"vsmtp: queue {args.action} needs a queue id" + (" or --all" if args.action == "retry" else ""), file=sys.stderr)
        return 2
    with Journal(config.journal.path) as journal:
        state = queue_inspect.current(journal)
        ids = sorted(state.messages) if getattr(args, "all", False) else [args.id]
        for queue_id in ids:
            if queue_id not in state.messages:
                print(f"vsmtp: {queue_id} is not in the queue", file=sys.stderr)
                return 1
            position = queue_inspect.act(journal, args.action, queue_id)
            print(f"{queue_id}: {args.action} recorded at position {position}")
    return 0


def _plugins_list(args: argparse.Namespace, config: config_mod.Config) -> int:
    from .plugins import describe

    rows = describe(config.plugins)
    if args.json:
        print(json.dumps(rows))
        return 0
    for row in rows:
        state = "loaded" if row["loaded"] and row["installed"] else "NOT INSTALLED" if row["loaded"] else "installed"
        version = f"{row['distribution']} {row['version']}" if row["installed"] else "-"
        hooks = row.get("error") or ", ".join(row.get("hooks", [])) or "no hooks"
        print(f"{row['name']:<16} {state:<13} {version:<28} {hooks}")
    if not rows:
        print("no plugins installed (entry point group 'vsmtp')")
    return 0


def _rules_test(args: argparse.Namespace, config: config_mod.Config) -> int:
    from .rules.loader import RulesFile
    from .rules.replay import replay

    rules = RulesFile.load(args.rules)  # RulesError (a ConfigError) names the line
    with Journal(config.journal.path, readonly=True) as journal:
        differences, summary = trio.run(lambda: replay(journal, config, rules, since=args.since))
    if args.json:
        print(
            json.dumps(
                {"sessions": summary.sessions, "stages": summary.stages, "differences": [dataclasses.asdict(d) for d in differences]}
            )
        )
        return 0
    for d in differences:
        where = f"{d.stage} <{d.recipient}>" if d.recipient else d.stage
        print(f"session {d.session_id}{' message ' + d.queue_id if d.queue_id else ''}: {where}: {d.recorded} -> {d.replayed}")
    print(f"{summary.sessions} sessions replayed ({summary.stages} stage runs): {len(differences)} verdicts differ")
    return 0


def _auth_hash(args: argparse.Namespace, config: config_mod.Config) -> int:
    import getpass

    from .credentials import USER_NAME, hash_password

    if args.user and not USER_NAME.match(args.user):
        print(f"vsmtp: {args.user!r}: a user name has no spaces, ':' or '#'", file=sys.stderr)
        return 1
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            print("vsmtp: the passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("vsmtp: an empty password is not allowed", file=sys.stderr)
        return 1
    hashed = hash_password(password)
    print(f"{args.user}:{hashed}" if args.user else hashed)
    return 0


def _dkim_keygen(args: argparse.Namespace, config: config_mod.Config) -> int:
    from pathlib import Path

    from .auth import dkim

    path = Path(args.key or f"var/dkim/{args.selector}.{args.domain}.key")
    if path.exists():
        print(f"vsmtp: {path} exists; not overwritten", file=sys.stderr)
        return 1
    try:
        pem, record = dkim.generate(args.algorithm, bits=args.bits)
    except ValueError as exc:
        print(f"vsmtp: {exc}", file=sys.stderr)
        return 2
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    print(f"# private key written to {path} (mode 0600); publish this record:")
    print(dkim.zone_line(f"{args.selector}._domainkey.{args.domain}", record))
    print("# and sign with it:")
    print(f'[[dkim.sign]]\ndomain = "{args.domain}"\nselector = "{args.selector}"\nkey = "{path}"\nalgorithm = "{args.algorithm}"')
    return 0


def _dmarc_report(args: argparse.Namespace, config: config_mod.Config) -> int:
    from pathlib import Path

    from . import reporting

    until = args.until if args.until is not None else time.time()
    outcomes = reporting.run(config, since=args.since, until=until, domain=args.domain, output=Path(args.output), send=args.send)
    if args.json:
        rows = [
            {"domain": o.domain, "file": str(o.path), "messages": o.messages, "sent_to": o.sent_to, "skipped": o.skipped} for o in outcomes
        ]
        print(json.dumps(rows, ensure_ascii=False))
        return 0
    for o in outcomes:
        print(f"{o.domain}: {o.messages} messages -> {o.path}")
        for address in o.sent_to:
            print(f"  queued to {address}")
        for address, why in o.skipped:
            print(f"  not sent to {address}: {why}")
    if not outcomes:
        print("no DMARC evaluations with a policy record in that period")
    return 0


def _tlsrpt_report(args: argparse.Namespace, config: config_mod.Config) -> int:
    """The reports as JSON, one per line (RFC 8460 4.4), read from the journal; with --send,
    what was sent where on standard error."""
    from . import reporting
    from .net import tlsrpt

    try:
        start, end = tlsrpt.day_range(args.day)
    except ValueError:
        print(f"vsmtp: --day {args.day!r}: expected YYYY-MM-DD", file=sys.stderr)
        return 2
    outcomes = reporting.tls_reports(config, start=start, end=end, domain=args.domain, send=args.send)
    for outcome in outcomes:
        print(json.dumps(outcome.report, ensure_ascii=False))
        for uri in outcome.sent_to:
            print(f"sent to {uri}", file=sys.stderr)
        for uri, why in outcome.skipped:
            print(f"not sent to {uri}: {why}", file=sys.stderr)
    if not outcomes:
        print(f"no TLS sessions on {args.day}", file=sys.stderr)
    return 0


def _config_show(args: argparse.Namespace, config: config_mod.Config) -> int:
    print(json.dumps(dataclasses.asdict(config), indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
