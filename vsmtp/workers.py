"""Several processes: `workers` receiving processes and one delivery process, one journal.

Python runs one instruction at a time per process, so one process uses one core. With
`workers = N` (N >= 1), `vsmtp serve` becomes a supervisor that:

- binds every listening address N times with SO_REUSEPORT (net/server.py, bind_sockets), so
  the kernel spreads connections across the receiving processes, and keeps the sockets: a
  receiving process that dies is restarted on the same sockets and no queued connection is
  lost;
- starts N receiving processes (`python -m vsmtp.workers`, below), each with its own journal
  writer appending to the shared LMDB environment (LMDB serialises their transactions, so
  positions stay unique and gapless);
- runs delivery itself: the queue projection, the scheduler and the observers, woken by a
  doorbell pipe the receiving processes ring after each commit (vsmtp_journal.doorbell);
- forwards SIGHUP (reload) and SIGTERM (graceful stop) to the receiving processes, which are
  in their own process group so that a terminal's Ctrl-C reaches only the supervisor;
- shares a connection table (net/counts.py) and a rates table (net/anvil.py) with them, so
  the connection and rate limits hold for the server as a whole, exactly, not per process.

Each receiving process holds the read end of a "lifeline" pipe whose write end only the
supervisor has: if the supervisor dies, even by SIGKILL, the pipe reads EOF and the receiving
processes exit at once instead of serving on without delivery.

`workers = 0` keeps everything in one process (daemon.serve), as the in-process tests run it.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict

import trio
from vsmtp_journal import doorbell

from . import config as config_mod
from . import telemetry
from .config import Config
from .daemon import RELOAD_ERRORS, Running, SignalActions, journal_lock, serve, serve_signals, signal_actions
from .net import anvil, counts
from .net.server import bind_sockets
from .net.settings import SessionSettings
from .telemetry import logs

log = logging.getLogger("vsmtp.workers")  # not "__main__" in a receiving process

RESTART_DELAY = (0.5, 30.0)  # first and longest wait before restarting a receiving process


class _Spec(TypedDict):
    """What a receiving process is told, as JSON on its command line."""

    index: int  # 1..N, as in its log lines
    config: str | None  # the file it reloads on SIGHUP
    table: dict[str, Any]  # the configuration in force, to start with (config.to_table)
    ready: int  # a pipe to say "serving, signals handled"
    log_level: str
    lifeline: int  # fds it inherits
    doorbell: int
    counts: tuple[int, int, int]  # fd, rows, its own row
    anvil: int  # the shared rates table's fd
    sockets: list[tuple[str, int]]  # (listener name, fd)


@dataclass(slots=True)
class _Child:
    index: int
    sockets: list[tuple[config_mod.ListenerConfig, socket.socket]]
    process: trio.Process | None = None
    ready: bool = False  # its signal handlers are in place: SIGHUP reloads instead of killing it
    reload_pending: bool = False  # a SIGHUP came before it was ready
    exits: list[int] = field(default_factory=list)


class Supervisor:
    def __init__(self, config: Config, config_path: str | None, *, log_level: str = "INFO") -> None:
        self.config = config
        self.config_path = config_path
        self.log_level = log_level
        self.stopping = False
        self.children: list[_Child] = []
        self._lifeline_r, self._lifeline_w = os.pipe()
        self._doorbell_r, self._doorbell_w = os.pipe()
        os.set_blocking(self._doorbell_w, False)
        self._counts = counts.create(config.workers)  # connection counts, a row per receiving process
        self._anvil = anvil.create()  # the rates every receiving process counts in (net/anvil.py)

    async def serve(self) -> None:
        """Serve until SIGTERM or SIGINT, then stop gracefully; a second one stops at once."""
        with journal_lock(self.config.journal.path):  # before binding: a second vsmtp must not join the port
            telemetry.fresh_start(self.config.journal.path)  # the metric snapshots of a previous run
            await self._run()

    async def _run(self) -> None:
        workers = self.config.workers
        SessionSettings.build(self.config)  # certificates checked (or generated) once, before any receiver starts
        sets = bind_sockets(self.config, workers)
        self.children = [_Child(index, sockets) for index, sockets in enumerate(sets, start=1)]
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async with trio.open_nursery() as nursery:
                running: Running = await nursery.start(self._deliver, nursery.cancel_scope)
                for listener, sock in sets[0]:
                    host, port = sock.getsockname()[:2]
                    log.info("listener %s (%s): accepting SMTP on %s port %d", listener.name, listener.role, host, port)
                children = trio.CancelScope()
                nursery.start_soon(self._supervise_all, children)
                log.info("vsmtp ready: %d receiving processes and this delivery process (pid %d)", workers, os.getpid())

                def stop_now() -> None:
                    self._signal_children(signal.SIGTERM)  # a second one: they stop at once
                    running.cancel_scope.cancel()

                actions = SignalActions(
                    reload=lambda: self._reload(running),
                    stop=lambda grace: self._stop(running, children, grace),
                    stop_now=stop_now,
                    grace=lambda: self.config.limits.shutdown_grace,
                )
                await serve_signals(signals, actions, nursery)

    async def _deliver(self, scope: trio.CancelScope, task_status: trio.TaskStatus[Running]) -> None:
        # The doorbell's write end stays open here too, so the listener never reads EOF while
        # no receiving process runs (between a crash and its restart).
        await serve(self.config, receive=False, doorbell_in=self._doorbell_r, process="delivery", task_status=task_status)
        scope.cancel()  # delivery has stopped: leave the signal loop too

    async def _stop(self, running: Running, children: trio.CancelScope, grace: float) -> None:
        self.stopping = True  # a receiving process that exits now is not restarted
        for child in self.children:
            for _, sock in child.sockets:
                sock.close()  # our copies: the port closes once each receiver closes its own
        self._signal_children(signal.SIGTERM)
        with trio.move_on_after(grace + 10):
            for child in self.children:
                if child.process is not None:
                    await child.process.wait()
        self._signal_children(signal.SIGKILL)  # still there after the grace: cut
        children.cancel()
        await running.stop(0)

    def _reload(self, running: Running) -> None:
        """Check the file; in force from now on for receiving processes that (re)start, and for
        this process's postq and delivery stages. Each running receiver reloads it on its own
        (and logs the result)."""
        try:
            new = config_mod.load(self.config_path)
            running.reload(new)  # a broken rules file keeps the configuration in force too
            self.config = new
            log.info("received SIGHUP: the receiving processes reload the configuration")
        except RELOAD_ERRORS as exc:
            log.error("received SIGHUP: reload failed, keeping the configuration in force: %s", exc)
            return
        self._signal_children(signal.SIGHUP)

    def _signal_children(self, signum: int) -> None:
        for child in self.children:
            if child.process is None or child.process.returncode is not None:
                continue
            if signum == signal.SIGHUP and not child.ready:
                child.reload_pending = True  # the default action of SIGHUP would kill it
            else:
                child.process.send_signal(signum)

    async def _supervise_all(self, scope: trio.CancelScope) -> None:
        with scope:
            async with trio.open_nursery() as nursery:
                for child in self.children:
                    nursery.start_soon(self._supervise, child)

    async def _supervise(self, child: _Child) -> None:
        """Run one receiving process; restart it (after a growing delay) if it dies."""
        delay = RESTART_DELAY[0]
        while not self.stopping:
            started = trio.current_time()
            ready_r, ready_w = os.pipe()
            child.ready = child.reload_pending = False
            try:
                child.process = await trio.lowlevel.open_process(
                    self._argv(child, ready_w),
                    pass_fds=[
                        self._lifeline_r,
                        self._doorbell_w,
                        self._counts,
                        self._anvil,
                        ready_w,
                        *(sock.fileno() for _, sock in child.sockets),
                    ],
                    process_group=0,
                )
            finally:
                os.close(ready_w)
            async with trio.open_nursery() as watching:
                watching.start_soon(self._await_ready, child, ready_r)
                code = await child.process.wait()
                watching.cancel_scope.cancel()
            os.close(ready_r)
            child.exits.append(code)
            telemetry.retire(self.config.journal.path, f"receiver-{child.index}")  # its counters live on in /metrics
            if self.stopping:
                return
            delay = RESTART_DELAY[0] if trio.current_time() - started > 60 else min(delay * 2, RESTART_DELAY[1])
            log.error("receiving process %d (pid %d) exited with %s; restarting in %.1fs", child.index, child.process.pid, code, delay)
            await trio.sleep(delay)

    async def _await_ready(self, child: _Child, fd: int) -> None:
        await trio.lowlevel.wait_readable(fd)
        if os.read(fd, 1) and child.process is not None:
            child.ready = True
            if child.reload_pending:
                child.process.send_signal(signal.SIGHUP)

    def _argv(self, child: _Child, ready: int) -> list[str]:
        spec: _Spec = {
            "index": child.index,
            "config": self.config_path,
            "table": config_mod.to_table(self.config),
            "ready": ready,
            "log_level": self.log_level,
            "lifeline": self._lifeline_r,
            "doorbell": self._doorbell_w,
            "counts": (self._counts, self.config.workers, child.index - 1),
            "anvil": self._anvil,
            "sockets": [(listener.name, sock.fileno()) for listener, sock in child.sockets],
        }
        return [sys.executable, "-m", "vsmtp.workers", json.dumps(spec)]


# -- the receiving process ----------------------------------------------------------------


def receiver_main(argv: Sequence[str]) -> int:
    spec: _Spec = json.loads(argv[0])
    # The configuration in force, as the supervisor holds it: not the file, which may have
    # been changed (even broken) since the last successful reload.
    config = config_mod.from_table(spec["table"], spec["config"] or "<embedded defaults>")
    logs.configure(spec["log_level"], process=f"receiver-{spec['index']}", form=config.telemetry.log_format)
    by_name = {listener.name: listener for listener in config.listeners}
    sockets = [(by_name[name], socket.socket(fileno=fd)) for name, fd in spec["sockets"]]
    settle_heap()
    trio.run(_receive, config, spec, sockets)
    return 0


GC_THRESHOLDS = (10_000, 20, 20)  # Python's defaults are (700, 10, 10)


def settle_heap() -> None:
    """Before a long-running process starts serving: what was made while it started (the
    modules, the configuration, the rules) is moved out of the garbage collector's view
    (gc.freeze), so that its full collections walk only what serving makes; and young
    collections run after more allocations than Python's default of 700 (each message
    makes a few hundred objects that live until its reply, and a span until its export:
    with the defaults they were walked again and again). Measured with gc.callbacks in a
    receiving process, 1 KiB messages, 50 sessions, OTLP export on: 0.11 ms of collection
    per message before, 0.01 ms after."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def _receive(config: Config, spec: _Spec, sockets: list[tuple[config_mod.ListenerConfig, socket.socket]]) -> None:
    lifeline = spec["lifeline"]
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_lifeline, lifeline)
            running: Running = await nursery.start(
                lambda task_status: _serve_then_leave(config, spec, sockets, nursery.cancel_scope, task_status)
            )
            os.write(spec["ready"], b"R")  # from here a SIGHUP reloads
            os.close(spec["ready"])
            await serve_signals(signals, signal_actions(running, spec["config"]), nursery)


async def _serve_then_leave(
    config: Config,
    spec: _Spec,
    sockets: list[tuple[config_mod.ListenerConfig, socket.socket]],
    scope: trio.CancelScope,
    task_status: trio.TaskStatus[Running],
) -> None:
    doorbell, (fd, rows, row) = spec["doorbell"], spec["counts"]
    shared = anvil.Anvil(counts.ConnectionCounts(fd, rows=rows, row=row), spec["anvil"])
    process = f"receiver-{spec['index']}"
    await serve(config, deliver=False, sockets=sockets, doorbell_out=doorbell, anvil=shared, process=process, task_status=task_status)
    scope.cancel()


async def _watch_lifeline(fd: int) -> None:
    await doorbell.listen(fd, lambda: None)  # nobody writes to it: it returns when the supervisor is gone
    log.critical("the supervisor is gone: exiting at once")
    os._exit(70)  # EX_SOFTWARE; what was acknowledged is in the journal already


if __name__ == "__main__":
    sys.exit(receiver_main(sys.argv[1:]))
