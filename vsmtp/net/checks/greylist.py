"""Greylisting at RCPT (RFC 6647), a core feature: the first attempt of a triplet (the
client's network, /24 or /64, the sender, the recipient) is told to try again later (450
4.7.1); one retried after `greylist.delay` passes; a client whose mail passed
`greylist.passes` times is not greylisted again. State lives in a small SQLite database
every receiving process shares (`greylist.database`), asked in a worker thread; what
nobody retried is forgotten after `greylist.expiry`. Clients in relay.networks and
authenticated clients are never greylisted."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import trio

from ...config import Config, GreylistConfig
from ...queue import policy
from ...rules.context import Context
from ...rules.verdicts import Verdict, reject
from ..anvil import network
from .base import Check, Shared

_SCHEMA = """
CREATE TABLE IF NOT EXISTS triplets (triplet TEXT PRIMARY KEY, first REAL NOT NULL, passed REAL);
CREATE TABLE IF NOT EXISTS clients (network TEXT PRIMARY KEY, passes INTEGER NOT NULL, last REAL NOT NULL);
"""


class Greylist:
    """The database: one connection per thread that asks (SQLite's rule)."""

    def __init__(self, config: GreylistConfig) -> None:
        self.config = config
        self.path = Path(config.database)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._local = threading.local()
        self._asked = 0
        with self._db() as db:
            db.executescript(_SCHEMA)

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # losing the last seconds of greylisting state costs a retry, no mail
            self._local.db = db
        return db

    def wait(self, client: str, sender: str, recipient: str, *, now: float) -> float:
        """Seconds the client must still wait for this triplet (0: it passes). Blocking."""
        net = network(client)
        triplet = f"{net}|{sender.lower()}|{recipient.lower()}"
        db = self._db()
        with db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT passes FROM clients WHERE network = ?", (net,)).fetchone()
            if row is not None and self.config.passes and row[0] >= self.config.passes:
                db.execute("UPDATE clients SET last = ? WHERE network = ?", (now, net))
                return 0.0
            found = db.execute("SELECT first, passed FROM triplets WHERE triplet = ?", (triplet,)).fetchone()
            if found is None:
                db.execute("INSERT INTO triplets (triplet, first) VALUES (?, ?)", (triplet, now))
                return self.config.delay
            first, passed = found
            if passed is None and now - first < self.config.delay:
                return float(self.config.delay - (now - float(first)))
            if passed is None:
                db.execute(
                    "INSERT INTO clients (network, passes, last) VALUES (?, 1, ?) "
                    "ON CONFLICT(network) DO UPDATE SET passes = passes + 1, last = excluded.last",
                    (net, now),
                )
            db.execute("UPDATE triplets SET passed = ? WHERE triplet = ?", (now, triplet))
        self._asked += 1
        if self._asked % 1000 == 0:
            self.expire(now=now)
        return 0.0

    def expire(self, *, now: float) -> None:
        cutoff = now - self.config.expiry
        with self._db() as db:
            db.execute("DELETE FROM triplets WHERE coalesce(passed, first) < ?", (cutoff,))
            db.execute("DELETE FROM clients WHERE last < ?", (cutoff,))


class GreylistCheck(Check):
    name = "vsmtp:greylist"
    stages = frozenset({"rcpt"})

    def __init__(self, config: Config) -> None:
        self.greylist = Greylist(config.greylist)
        self.networks = policy.relay_networks(config)
        self._threads = trio.CapacityLimiter(2)

    async def decide(self, stage: str, ctx: Context) -> Verdict | None:
        if ctx.auth or policy.may_relay(ctx.client.address, self.networks):
            return None
        ask = self.greylist.wait
        client, sender, recipient = str(ctx.client.address), ctx.sender or "", ctx.recipient
        wait = await trio.to_thread.run_sync(lambda: ask(client, sender, recipient, now=time.time()), limiter=self._threads)
        if wait > 0:
            return reject(f"450 4.7.1 Greylisted: try again in {wait:.0f} seconds")
        return None


def build(config: Config, shared: Shared) -> Check | None:
    return GreylistCheck(config) if config.greylist.enabled else None
