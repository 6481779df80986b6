"""The `vsmtp` command: serve, and the operator's tools over the journal.

    vsmtp serve [--config FILE]
    vsmtp journal tail [--config FILE] [-n N]
    vsmtp config show [--config FILE]

Every command reads the same configuration as the daemon, so run from the daemon's
directory with no arguments it finds the daemon's journal.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import sys
from collections.abc import Sequence

import trio
from vsmtp_journal import Journal, JournalError, Record

from . import config as config_mod
from .errors import VsmtpError
from .queue import events as qe


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

    serve = sub.add_parser("serve", parents=[common], help="run the MTA until SIGTERM/SIGINT")
    serve.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    serve.set_defaults(func=_serve)

    journal = sub.add_parser("journal", help="read the journal").add_subparsers(metavar="ACTION")
    tail = journal.add_parser("tail", parents=[common], help="the last events, one line each")
    tail.add_argument("-n", type=int, default=50, metavar="N", help="how many events (default 50; 0 for all)")
    tail.add_argument("--json", action="store_true", help="one JSON object per line")
    tail.set_defaults(func=_journal_tail)

    config = sub.add_parser("config", help="the configuration").add_subparsers(metavar="ACTION")
    show = config.add_parser("show", parents=[common], help="print the effective configuration")
    show.set_defaults(func=_config_show)
    return parser


def _serve(args: argparse.Namespace, config: config_mod.Config) -> int:
    from .daemon import run_until_signalled

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("vsmtp").info("configuration: %s", config.source)
    trio.run(run_until_signalled, config, args.config)
    return 0


def _journal_tail(args: argparse.Namespace, config: config_mod.Config) -> int:
    with Journal(config.journal.path, readonly=True) as journal:
        last = journal.last_position()
        after = 0 if args.n <= 0 else max(last - args.n, 0)
        for record in journal.read(after):
            print(format_json(record) if args.json else format_line(record))
    return 0


def format_line(record: Record) -> str:
    """'#12 2026-11-24T20:10:00.123Z session.opened session_id=... peer_host=...'"""
    event = qe.decode(record)
    at = getattr(event, "at", None)
    when = _iso(at) if isinstance(at, int | float) else "-"
    return f"#{record.position} {when} {record.tag} {event.describe()}"


def format_json(record: Record) -> str:
    event = qe.decode(record)
    payload = event.to_payload() if isinstance(event, qe.JournalEvent) else event.payload
    return json.dumps({"position": record.position, "tag": record.tag, "version": record.version, "payload": payload}, default=_jsonable)


def _jsonable(value: object) -> object:
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _iso(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, tz=datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _config_show(args: argparse.Namespace, config: config_mod.Config) -> int:
    print(json.dumps(dataclasses.asdict(config), indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
