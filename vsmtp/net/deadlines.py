"""When a peer must have finished what it is saying: deadlines, not idle timers.

A timer that restarts with every byte lets a client that sends one byte every few seconds
hold a session (and its slot) for as long as `limits.session_duration`. Here each command
line has a deadline that starts when the server waits for it (`command_timeout`, or
`stress_timeout` while the server is busy: Postfix's stress-dependent smtpd_timeout), and
the whole of a DATA or BDAT transfer has one that grows only with what arrives
(`data_timeout` plus one second per `min_data_rate` octets: Postfix's
smtpd_min_data_rate). Nothing here does I/O: the session asks for the deadline of its next
read and says what it received and answered.
"""

from __future__ import annotations

from collections.abc import Callable

from ..config import LimitsConfig


class Deadlines:
    def __init__(self, limits: LimitsConfig, *, now: float, stressed: Callable[[], bool] = lambda: False) -> None:
        self.limits = limits
        self.stressed = stressed
        self.session_end = now + limits.session_duration
        self._command_start: float | None = None
        self._data_start: float | None = None
        self._data_bytes = 0

    def answered(self) -> None:
        """A command was answered: the next one's clock starts when the server waits for it."""
        self._command_start = None

    def received(self, octets: int) -> None:
        """Message data arrived (a DATA or BDAT chunk)."""
        self._data_bytes += octets

    def until(self, *, in_data: bool, now: float) -> float:
        """The deadline of the next read."""
        limits = self.limits
        if in_data:
            if self._data_start is None:
                self._data_start, self._data_bytes = now, 0
            base = min(limits.data_timeout, limits.stress_timeout) if self.stressed() else limits.data_timeout
            earned = self._data_bytes / limits.min_data_rate if limits.min_data_rate else 0.0
            return min(self._data_start + base + earned, self.session_end)
        self._data_start = None
        if self._command_start is None:
            self._command_start = now
        # Asked at every read, so that a server that becomes busy shortens the deadlines of
        # the commands already being trickled, not only of those to come.
        timeout = min(limits.command_timeout, limits.stress_timeout) if self.stressed() else limits.command_timeout
        return min(self._command_start + timeout, self.session_end)
