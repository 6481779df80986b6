"""Limits shared by every receiving process, as Postfix's anvil keeps them: sessions at once
from one address and from one network (/24, /64), and, per interval, new connections,
messages, recipients and failed logins; a lock-out after too many failed logins, from one
address or for one user name, that a right password does not lift while it lasts.

The counts live in shared memory the supervisor creates (a memfd, inherited by each
receiving process): the sessions at once in net/counts.py, the rates here, one slot per
key (a hash; a collision makes two keys share a slot, which errs on the side of refusing).
Every decision is taken under one POSIX record lock on the rates table, so a limit holds
exactly however many processes ask at once. Time is CLOCK_MONOTONIC, the same for every
process of the machine. Clients in relay.networks are never limited here.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import ipaddress
import mmap
import os
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ..config import AnvilConfig, LimitsConfig
from ..queue import policy
from ..smtp import replies
from ..smtp.replies import Reply
from .counts import ConnectionCounts

SLOTS = 1 << 15
# A slot: the key's 64-bit hash, the window it counts (interval number), the count in it,
# the count in the window before, and the monotonic time a lock-out ends (0: none).
_SLOT = struct.Struct("=QIIId")


def create() -> int:
    """A zeroed rates table, as an inheritable memfd."""
    fd = os.memfd_create("vsmtp-anvil", 0)
    os.ftruncate(fd, SLOTS * _SLOT.size)
    return fd


@functools.lru_cache(maxsize=4096)  # asked at every connection and its end: parsed once per address
def network(host: str) -> str:
    """The client's network: its /24 for IPv4, its /64 for IPv6 (IPv4-mapped as IPv4)."""
    address = ipaddress.ip_address(host)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    prefix = 24 if address.version == 4 else 64
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


@dataclass(frozen=True, slots=True)
class _Rate:
    count: float  # events in the last interval (the previous window weighted by what is left of it)
    locked_until: float


class Anvil:
    def __init__(self, counts: ConnectionCounts, fd: int | None = None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.counts = counts
        self.fd = create() if fd is None else fd
        self.clock = clock  # CLOCK_MONOTONIC: the same for every process of the machine
        self._map = mmap.mmap(self.fd, SLOTS * _SLOT.size)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fcntl.lockf(self.fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_UN)

    # -- sessions at once, and new connections ----------------------------------------------

    def admit(self, host: str, limits: LimitsConfig, config: AnvilConfig, *, exempt: bool) -> Reply | None:
        """Count a new session from `host`, or say why it is refused (nothing is counted then)."""
        net = "net:" + network(host)
        now = self.clock()
        with self._locked():
            if self.counts.total() >= limits.max_connections:
                return replies.TOO_MANY_CONNECTIONS
            if not exempt:
                if self.counts.of(host) >= limits.max_connections_per_ip:
                    return replies.TOO_MANY_CONNECTIONS_FROM_YOU
                if config.network_connections and self.counts.of(net) >= config.network_connections:
                    return replies.TOO_MANY_CONNECTIONS_FROM_YOUR_NETWORK
                if not self._take(f"connect:{host}", config.connection_rate, config.interval, now):
                    return replies.CONNECTION_RATE
                if not self._take(f"connect:{net}", config.network_connection_rate, config.interval, now):
                    return replies.CONNECTION_RATE
            self.counts.add(host)
            self.counts.add(net, total=False)
        return None

    def release(self, host: str) -> None:
        self.counts.add(host, -1)
        self.counts.add("net:" + network(host), -1, total=False)

    # -- rates -------------------------------------------------------------------------------

    def take(self, key: str, limit: int, interval: float) -> bool:
        """Count one event of `key`; False (and not counted) when `limit` per `interval` is reached."""
        if not limit:
            return True
        with self._locked():
            return self._take(key, limit, interval, self.clock())

    def _take(self, key: str, limit: int, interval: float, now: float) -> bool:
        if not limit:
            return True
        offset, rate, window, current, previous, until = self._read(key, interval, now)
        if rate.count >= limit:
            return False
        self._map[offset : offset + _SLOT.size] = _SLOT.pack(_hash(key), window, current + 1, previous, until)
        return True

    def _read(self, key: str, interval: float, now: float) -> tuple[int, _Rate, int, int, int, float]:
        offset = (_hash(key) % SLOTS) * _SLOT.size
        stored_key, stored_window, count, previous, until = _SLOT.unpack_from(self._map, offset)
        window = int(now // interval)
        if stored_key != _hash(key):
            stored_window, count, previous, until = window, 0, 0, 0.0  # empty, or another key's: ours now
        if stored_window != window:
            previous = count if stored_window == window - 1 else 0
            count = 0
        left = 1.0 - (now / interval - window)  # of the previous window still within the last interval
        return offset, _Rate(count=count + previous * left, locked_until=until), window, count, previous, until

    # -- failed logins -----------------------------------------------------------------------

    def locked_out(self, *keys: str) -> float:
        """Seconds until every lock-out of `keys` has ended (0: none is locked out)."""
        now = self.clock()
        longest = 0.0
        with self._locked():
            for key in keys:
                stored_key, _, _, _, until = _SLOT.unpack_from(self._map, (_hash(key) % SLOTS) * _SLOT.size)
                if stored_key == _hash(key):
                    longest = max(longest, until - now)
        return longest

    def failed(self, key: str, limit: int, interval: float, lockout: float) -> bool:
        """Count a failed login of `key`; True when that makes it locked out (for `lockout` s)."""
        if not limit:
            return False
        now = self.clock()
        with self._locked():
            offset, rate, window, current, previous, until = self._read(key, interval, now)
            count = current + 1
            locked = rate.count + 1 >= limit
            until = now + lockout if locked else until
            self._map[offset : offset + _SLOT.size] = _SLOT.pack(_hash(key), window, count, previous, until)
            return locked


def _hash(key: str) -> int:
    data = key.encode("utf-8", "surrogateescape")
    return (zlib.crc32(data) << 32) | zlib.adler32(data)


def exempt(host: str, networks: tuple[policy.IpNetwork, ...]) -> bool:
    """Clients in relay.networks (our own, or a proxy we trust) are never limited by anvil."""
    return policy.may_relay(host, networks)
